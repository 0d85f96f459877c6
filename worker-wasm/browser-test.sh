#!/usr/bin/env bash
# The browser tests: wasm-bindgen-test in headless Chromium (flags in webdriver.json),
# the known-answer suite on the CPU path in wasm and on WebGPU (SwiftShader).
# Needs chromium, chromium-driver and wasm-bindgen-cli 0.2.130 (build.sh installs it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${LUPUS_WASM_TARGET_DIR:-$here/../target/wasm}"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$(command -v wasm-bindgen-test-runner)"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-600}"
cd "$here"
if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  cargo test --release --target wasm32-unknown-unknown --features gpu --test browser
else
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
  /usr/bin/cargo test --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort,test \
    --features gpu --test browser
fi
