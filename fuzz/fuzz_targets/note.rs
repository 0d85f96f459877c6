//! C2SP signed notes (`lupus_ledger::note`) and note key strings, on arbitrary bytes.
//!
//! Properties: a note that parses, written back from its parsed form, parses to the
//! same thing and opens (or fails to open) the same way; a note that opens still opens
//! after a witness cosignature is added; a key string that parses is written back to a
//! string that parses to the same key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::note::{
    NoteSigner, NoteVerifier, add_signature, open_note, open_note_bytes, parse_note,
};
use lupus_fuzz::{verifiers, witness_signer};

fuzz_target!(|data: &[u8]| {
    let verifiers = verifiers();
    let opened = open_note_bytes(data, &verifiers);
    let Ok(parsed) = parse_note(data) else {
        assert!(opened.is_err(), "a note that does not parse opened");
        keys(data);
        return;
    };
    // Written back: the text, the blank line, one line per (deduplicated) signature.
    let mut again = format!("{}\n", parsed.text);
    for s in &parsed.signatures {
        again.push_str(&s.to_line());
    }
    let reparsed = parse_note(again.as_bytes()).expect("a re-serialised note parses");
    assert_eq!(reparsed, parsed);
    assert_eq!(open_note(&again, &verifiers), opened);

    let Ok(opened) = opened else { return };
    assert!(!opened.verified_by.is_empty());
    assert_eq!(opened.text, parsed.text);
    // A witness cosigns: the note still opens, now verified by the witness too (unless
    // the note is full or already carried a witness signature, which must be valid).
    let witness = witness_signer();
    let sig = witness
        .signature(&opened.text)
        .expect("note text ends in a newline");
    if let Ok(cosigned) = add_signature(&again, &sig) {
        let o = open_note(&cosigned, &verifiers).expect("a cosigned note still opens");
        assert!(o.verified_by.iter().any(|s| s.name == witness.name()));
    }
});

/// Verifier and private key strings: parse, print, parse again.
fn keys(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = NoteVerifier::parse(text) {
        let back = NoteVerifier::parse(&v.to_string()).expect("a printed verifier key parses");
        assert_eq!(back.name(), v.name());
        assert_eq!(back.key_id(), v.key_id());
        assert_eq!(back.public_key(), v.public_key());
    }
    if let Ok(s) = NoteSigner::from_private_key(text) {
        let back =
            NoteSigner::from_private_key(&s.private_key()).expect("a printed private key parses");
        assert_eq!(back.verifier_key(), s.verifier_key());
    }
}
