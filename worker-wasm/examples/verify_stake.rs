//! Verifies a stake statement offline, as a volunteer would with the file the page's
//! "Download my stake statement" button saves: nothing but the statement and the log's
//! public key (`GET /v1/job` gives it as `log_key`).
//!
//! `cargo run -p lupus-worker --example verify_stake -- STATEMENT.json LOG_KEY`

use lupus_ledger::stake::{StakeStatement, verify_statement};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(key)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: verify_stake STATEMENT.json LOG_KEY");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(2);
        }
    };
    let statement: StakeStatement = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{path} is not a stake statement: {e}");
            std::process::exit(1);
        }
    };
    match verify_statement(&statement, key) {
        Ok(v) => println!(
            "verified: {} holds {} of {} shares at epoch {} (round {})",
            v.pubkey, v.balance.0, v.total.0, v.epoch.0, v.round.0
        ),
        Err(e) => {
            eprintln!("the statement does not verify: {e}");
            std::process::exit(1);
        }
    }
}
