#!/usr/bin/env bash
# Builds the known-answer suite for wasm32-unknown-unknown and runs it under Node,
# failing unless it reproduces the native reference bits (DESIGN.md, Determinism).
# Uses rustup's wasm32 target where installed; otherwise Debian's rustc-web with
# -Zbuild-std (needs: apt-get install -y rustc-web cargo-web rust-web-src rust-web-llvm
# lld-22; see shared TOOLCHAIN.md). Needs node >= 18.
# KAT_WASM_TARGET_DIR picks the build folder (default: target/ beside this script).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${KAT_WASM_TARGET_DIR:-$here/target}"
manifest="$here/Cargo.toml"
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
    cargo build --release --target wasm32-unknown-unknown --manifest-path "$manifest" \
        --target-dir "$target_dir"
else
    RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        /usr/bin/cargo build --release --target wasm32-unknown-unknown \
        -Zbuild-std=std,panic_abort --manifest-path "$manifest" --target-dir "$target_dir"
fi
node "$here/kat.mjs" "$target_dir/wasm32-unknown-unknown/release/lupus_kat_wasm.wasm"
