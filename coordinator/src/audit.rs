//! Re-verifying a whole ledger from its public read API, trusting only the log's key.
//!
//! What [`reverify`] checks, from `/checkpoint` and `/tile/...` alone:
//! 1. the checkpoint is signed by the log key the job names;
//! 2. every hash tile of the tree verifies against the checkpoint's root
//!    (`VerifiedTiles`), and the entry bundles rebuild the same root;
//! 3. every entry decodes under the strict encoding and every participant signature
//!    verifies;
//! 4. the protocol fold (`lupus_protocol`, the one the auditor runs and the
//!    coordinator applies before writing) accepts every entry: the genesis job spec
//!    and key, challenges dictated by the revealed beacons, slashes that cite a
//!    conviction, credits that follow final acceptance, the model chain, and the
//!    shares fold with every epoch's root.
//!
//! The full auditor (`lupus-audit`) does more (re-running challenges, witnesses); this
//! is the check `lupus demo` prints and the end-to-end tests assert.

use std::collections::{BTreeMap, BTreeSet};

use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::entry::{Entry, EntryBody, PublicKey};
use lupus_ledger::hash::TreeSize;
use lupus_ledger::note::NoteVerifier;
use lupus_ledger::tiles::{
    VerifiedTiles, decode_entry_bundle, entry_bundles_for_growth, tiles_for_size,
};
use lupus_ledger::tree::MemoryTree;
use lupus_protocol::{ProtocolState, SharesFold};

use crate::client::{Client, ClientError};

/// What a re-verification found.
#[derive(Clone, Debug)]
pub struct AuditReport {
    pub size: u64,
    pub root_hex: String,
    pub entries_by_kind: BTreeMap<String, u64>,
    pub total_shares: u64,
    pub accounts: usize,
    pub slashed: BTreeSet<PublicKey>,
    pub fold: SharesFold,
}

fn fail(what: impl std::fmt::Display) -> ClientError {
    ClientError::Decode(format!("ledger re-verification failed: {what}"))
}

/// Re-verifies the ledger served at `client`'s coordinator against `log_key`.
pub async fn reverify(client: &Client, log_key: &str) -> Result<AuditReport, ClientError> {
    let verifier = NoteVerifier::parse(log_key).map_err(fail)?;
    let note = String::from_utf8(client.get_bytes("/checkpoint").await?.to_vec()).map_err(fail)?;
    let cp = open_checkpoint(&note, &verifier).map_err(fail)?.checkpoint;
    let size = cp.size;

    let mut tiles = Vec::new();
    for t in tiles_for_size(size) {
        let data = client.get_bytes(&format!("/{}", t.path())).await?;
        tiles.push((t, data.to_vec()));
    }
    VerifiedTiles::new(size, &cp.root, tiles).map_err(fail)?;

    let mut tree = MemoryTree::new();
    let mut protocol = ProtocolState::default();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut slashed: BTreeSet<PublicKey> = BTreeSet::new();
    for bundle in entry_bundles_for_growth(TreeSize(0), size) {
        let data = client.get_bytes(&format!("/{}", bundle.path())).await?;
        for raw in decode_entry_bundle(&data).map_err(fail)? {
            let index = tree.size().0;
            tree.append_entry(&raw);
            let entry = Entry::decode(&raw).map_err(|e| fail(format!("entry {index}: {e}")))?;
            protocol
                .apply(index, &entry, log_key)
                .map_err(|e| fail(format!("entry {index}: {e}")))?;
            *kinds.entry(entry.kind().name().to_owned()).or_default() += 1;
            if let EntryBody::Slashed { key, .. } = entry.body() {
                slashed.insert(*key);
            }
        }
    }
    if tree.size() != size || tree.root() != cp.root {
        return Err(fail(
            "the entry bundles do not rebuild the checkpoint's root",
        ));
    }
    let fold = protocol.fold().clone();
    Ok(AuditReport {
        size: size.0,
        root_hex: cp.root.to_hex(),
        entries_by_kind: kinds,
        total_shares: fold.total().0,
        accounts: fold.balances().len(),
        slashed,
        fold,
    })
}
