//! `Entry::decode` (the log's canonical entry encoding, with the participant-signature
//! check) on arbitrary bytes.
//!
//! Properties (the module docs' "Strictness"): an entry that decodes encodes back to
//! exactly the input; rebuilding it from its body (and signature) gives the same
//! entry; its body's JSON form parses back to the same body; no strict prefix of it
//! decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::entry::{Entry, EntryBody};

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Entry::decode(data) else {
        return;
    };
    assert_eq!(entry.as_bytes(), data);
    assert_eq!(entry.encode(), data);
    let rebuilt = match entry.signature() {
        Some(sig) => Entry::with_signature(entry.body().clone(), *sig),
        None => Entry::unsigned(entry.body().clone()),
    }
    .expect("a decoded entry's body and signature rebuild it");
    assert_eq!(rebuilt, entry);
    let json = serde_json::to_string(entry.body()).expect("a body serialises");
    let back: EntryBody = serde_json::from_str(&json).expect("a body's JSON parses");
    assert_eq!(&back, entry.body());
    serde_json::to_string(&entry).expect("an entry serialises");
    for n in 0..data.len() {
        assert!(
            Entry::decode(&data[..n]).is_err(),
            "a prefix of {n} bytes decoded"
        );
    }
});
