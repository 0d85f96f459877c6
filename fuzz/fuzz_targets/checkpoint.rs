//! C2SP checkpoints (`lupus_ledger::checkpoint`) on arbitrary bytes, both as a bare
//! note text and as a signed note.
//!
//! Properties: a body that parses is written back byte for byte (one encoding per
//! checkpoint); a checkpoint that opens with the log's key re-signs to a note that
//! opens to the same checkpoint, with the same (deterministic Ed25519) log signature.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::checkpoint::{Checkpoint, open_checkpoint, sign_checkpoint};
use lupus_api::lupus_ledger::note::parse_note;
use lupus_fuzz::{LOG_ORIGIN, log_signer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let signer = log_signer();
    body(text, &signer);
    if let Ok(note) = parse_note(data) {
        body(&note.text, &signer);
    }
    if let Ok(signed) = open_checkpoint(text, &signer.verifier()) {
        assert_eq!(signed.checkpoint.origin, LOG_ORIGIN);
        let note =
            sign_checkpoint(&signed.checkpoint, &signer).expect("an opened checkpoint signs");
        let again =
            open_checkpoint(&note, &signer.verifier()).expect("a re-signed checkpoint opens");
        assert_eq!(again.checkpoint, signed.checkpoint);
        assert_eq!(again.log_signature, signed.log_signature);
    }
});

fn body(text: &str, signer: &lupus_api::lupus_ledger::note::NoteSigner) {
    let Ok(cp) = Checkpoint::parse_body(text) else {
        return;
    };
    assert_eq!(
        cp.to_body(),
        text,
        "a parsed checkpoint body is written back unchanged"
    );
    cp.validate().expect("a parsed checkpoint is valid");
    if cp.origin == LOG_ORIGIN {
        let note = sign_checkpoint(&cp, signer).expect("a valid checkpoint signs");
        let opened = open_checkpoint(&note, &signer.verifier()).expect("a signed checkpoint opens");
        assert_eq!(opened.checkpoint, cp);
    }
}
