//! `tlog-tiles` entry bundles (`lupus_ledger::tiles::decode_entry_bundle`) as the
//! auditor fetches them, then every entry in them decoded (`Entry::decode`).
//!
//! Properties: a bundle that decodes re-encodes to exactly the input, holds at most
//! 256 entries, and every entry in it that decodes encodes back to its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::entry::Entry;
use lupus_api::lupus_ledger::tiles::{TILE_WIDTH, decode_entry_bundle, encode_entry_bundle};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = decode_entry_bundle(data) else {
        return;
    };
    assert!(entries.len() <= usize::from(TILE_WIDTH));
    let slices: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let again = encode_entry_bundle(&slices).expect("decoded entries re-encode");
    assert_eq!(again, data);
    for e in &entries {
        if let Ok(entry) = Entry::decode(e) {
            assert_eq!(entry.as_bytes(), e.as_slice());
        }
    }
});
