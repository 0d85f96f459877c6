#!/usr/bin/env bash
# The Lupus demo, from a fresh checkout: builds the volunteer page's web worker (so a
# browser can join at http://127.0.0.1:8080/), then runs `lupus demo` on the embedded
# defaults: a coordinator (SQLite and blobs under ./lupus-data/), native workers and a
# verifier training the Shakespeare model for a few rounds. Arguments go to `lupus demo`
# (see `cargo run --release -p lupus-coordinator -- demo --help`).
#
#   scripts/demo.sh
#   scripts/demo.sh --json report.json --rounds 4
#
# The web build installs what it needs where missing (Debian's wasm32 toolchain,
# wasm-bindgen-cli); if it fails, the demo still runs with native workers and the page
# at / says how to build the web worker.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! worker-wasm/build.sh; then
  echo "==> the web worker did not build; the demo runs without the volunteer page" >&2
fi
exec cargo run --release -p lupus-coordinator -- demo "$@"
