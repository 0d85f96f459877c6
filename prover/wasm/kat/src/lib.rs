//! The known-answer suite as a wasm32 module (DESIGN.md, Determinism: the browser's
//! build must give the reference bits). Built for `wasm32-unknown-unknown` by
//! `prover/wasm/kat/kat-wasm.sh` and run by `prover/wasm/kat/kat.mjs` under Node.
//!
//! Exports (plain C ABI, no bindings generator):
//! - `kat_run() -> u32`: runs the suite once; returns 1 if every case equals the
//!   pinned reference hashes (exact class), 0 otherwise;
//! - `kat_digest_byte(i) -> u32`: byte `i` (0..32) of the combined digest of the run;
//! - `kat_expected_digest_byte(i) -> u32`: byte `i` of the digest of the pinned hashes.
//!
//! The `#[unsafe(no_mangle)]` attributes are the only way to name an export without a
//! bindings generator; there is no unsafe code.

use std::sync::OnceLock;

use lupus_prover::kat;

static DIGEST: OnceLock<([u8; 32], bool)> = OnceLock::new();

fn run() -> &'static ([u8; 32], bool) {
    DIGEST.get_or_init(|| {
        let results = kat::run_suite();
        let exact = kat::check_device(&results) == kat::DeviceClass::Exact;
        (kat::combined_digest(&results), exact)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn kat_run() -> u32 {
    u32::from(run().1)
}

#[unsafe(no_mangle)]
pub extern "C" fn kat_digest_byte(i: u32) -> u32 {
    run().0.get(i as usize).copied().map_or(0, u32::from)
}

#[unsafe(no_mangle)]
pub extern "C" fn kat_expected_digest_byte(i: u32) -> u32 {
    kat::expected_digest()
        .get(i as usize)
        .copied()
        .map_or(0, u32::from)
}
