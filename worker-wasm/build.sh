#!/usr/bin/env bash
# Builds the browser worker: lupus-worker for wasm32 (WebGPU kernels and the CPU
# reference), then wasm-bindgen's JS glue, into worker-wasm/pkg/, which the coordinator
# serves at /pkg/ next to the page (worker-wasm/www/, served at /).
#
# Uses rustup's wasm32 target where it is installed; otherwise Debian's rustc-web with
# its std source (-Zbuild-std), installing those packages if missing. wasm-bindgen-cli
# must match the wasm-bindgen crate exactly, so the pinned version is installed if the
# one on PATH differs. Every JS and wasm file gets a .br (Debian's brotli, installed if
# missing) and a .gz copy next to it.
#
#   worker-wasm/build.sh            release build into worker-wasm/pkg/
#   PROFILE=dev worker-wasm/build.sh  faster, larger
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$here/pkg"
bindgen_version=0.2.130
profile="${PROFILE:-release}"
export CARGO_TARGET_DIR="${LUPUS_WASM_TARGET_DIR:-$root/target/wasm}"
features=(--features gpu)

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  build=(cargo build --target wasm32-unknown-unknown)
else
  need=()
  for p in rustc-web cargo-web rust-web-src rust-web-llvm lld-22; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing ${need[*]} (Debian's wasm32 toolchain)" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
  build=(/usr/bin/cargo build --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort)
fi

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  echo "==> installing wasm-bindgen-cli $bindgen_version (about 4 minutes)" >&2
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi

cd "$root"
if [ "$profile" = release ]; then
  "${build[@]}" --release -p lupus-worker "${features[@]}"
  dir=release
else
  "${build[@]}" -p lupus-worker "${features[@]}"
  dir=debug
fi
rm -rf "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out" \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/$dir/lupus_worker.wasm"
# Precompressed copies next to every JS and wasm file: the coordinator sends the .br
# or .gz one to a browser that accepts it (tower-http's ServeDir), so the wasm travels
# compressed without compressing on each request.
if ! command -v brotli >/dev/null 2>&1; then
  echo "==> installing brotli (Debian's package)" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends brotli
fi
find "$out" -type f \( -name '*.js' -o -name '*.wasm' \) | while read -r f; do
  brotli -f -q 11 -o "$f.br" "$f"
  gzip -9 -n -c "$f" >"$f.gz"
done
size=$(wc -c <"$out/lupus_worker_bg.wasm")
br=$(wc -c <"$out/lupus_worker_bg.wasm.br")
gz=$(wc -c <"$out/lupus_worker_bg.wasm.gz")
echo "==> $out: lupus_worker_bg.wasm $size bytes, $br with brotli, $gz gzipped" >&2
