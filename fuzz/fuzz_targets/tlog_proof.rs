//! C2SP `tlog-proof` files (`lupus_ledger::proof::TlogProof`), parsed and verified as
//! `lupus-audit check-proof` does: the proven entry is the `extra` line's bytes.
//!
//! Properties: a proof that parses is written back byte for byte and parses to the
//! same value; a proof that verifies has an inclusion path the RFC 9162 verifier
//! accepts under the opened checkpoint's root and size, and the entry, when it
//! decodes, is canonical.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::entry::Entry;
use lupus_api::lupus_ledger::hash::leaf_hash;
use lupus_api::lupus_ledger::proof::{InclusionProof, TlogProof, verify_inclusion};
use lupus_fuzz::log_signer;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(proof) = TlogProof::parse(text) else {
        return;
    };
    let encoded = proof.encode();
    assert_eq!(
        encoded, text,
        "a parsed tlog-proof is written back unchanged"
    );
    assert_eq!(TlogProof::parse(&encoded).as_ref(), Ok(&proof));

    let entry = proof.extra.clone().unwrap_or_default();
    let leaf = leaf_hash(&entry);
    let Ok(signed) = proof.verify(&leaf, &log_signer().verifier()) else {
        return;
    };
    let inclusion = InclusionProof {
        index: proof.index,
        size: signed.checkpoint.size,
        path: proof.path.clone(),
    };
    assert_eq!(
        verify_inclusion(&inclusion, &leaf, &signed.checkpoint.root),
        Ok(())
    );
    assert!(proof.index.0 < signed.checkpoint.size.0);
    if let Ok(e) = Entry::decode(&entry) {
        assert_eq!(e.as_bytes(), entry.as_slice());
    }
});
