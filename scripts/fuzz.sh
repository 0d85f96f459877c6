#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, nightly Rust) for SECONDS
# each (default 20) and fails on the first crash, printing the crashing input's path.
#
#   scripts/fuzz.sh [SECONDS]
#
# Installs cargo-fuzz when it is missing, builds all targets once, then runs each one
# on its checked-in seeds (fuzz/corpus/<target>, read only) plus a working corpus that
# grows run after run ($FUZZ_TARGET_DIR/corpus/<target>). Keep $FUZZ_TARGET_DIR
# (default fuzz/target) between CI runs: builds are incremental and the working corpus
# carries over.
#
# Environment:
#   FUZZ_TARGET_DIR   where builds and the working corpus go (default fuzz/target)
#   FUZZ_TARGETS      space-separated subset of targets (default: all)
#   FUZZ_SANITIZER    cargo-fuzz sanitizer (default none: the crates fuzzed forbid
#                     unsafe code, so AddressSanitizer would mostly cost build and run
#                     time; use "address" to check dependencies' unsafe code too)
#   FUZZ_JOBS         parallel libFuzzer processes per target (default 1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-20}
case "$seconds" in '' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
  ;;
esac
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
sanitizer=${FUZZ_SANITIZER:-none}
jobs=${FUZZ_JOBS:-1}
# The fuzz workspace has its own target dir; a CARGO_TARGET_DIR meant for the main
# workspace must not capture it.
unset CARGO_TARGET_DIR

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> Installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

parallel=()
if [ "$jobs" -gt 1 ]; then parallel=(-fork="$jobs"); fi

targets=${FUZZ_TARGETS:-$(cd fuzz && cargo +nightly fuzz list)}
build=(-s "$sanitizer" --target-dir "$target_dir")

echo "==> Building fuzz targets ($(echo "$targets" | wc -w), sanitizer $sanitizer)"
start=$SECONDS
(cd fuzz && cargo +nightly fuzz build "${build[@]}")
echo "    built in $((SECONDS - start)) s"

# Run the built binaries directly: `cargo fuzz run` would rebuild first, and a run is
# then exactly the binary and its libFuzzer flags.
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"

failed=()
for t in $targets; do
  corpus="$target_dir/corpus/$t"
  artifacts="$target_dir/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$target_dir/fuzz-$t.log"
  echo "==> $t for ${seconds} s"
  status=0
  "$bin_dir/$t" "$corpus" "fuzz/corpus/$t" -max_total_time="$seconds" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${parallel[@]}" >"$log" 2>&1 ||
    status=$?
  # One line of figures: executions, speed, new inputs.
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$log" |
    sed 's/^stat:://; s/  */ /g' | tr '\n' ' ' | sed 's/^/    /'
  echo
  if [ "$status" -ne 0 ]; then
    crash=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
    echo "FAIL: $t crashed (exit $status); input: ${crash:-see $log}" >&2
    grep -E -m 5 "panicked at|assertion|ERROR: libFuzzer" "$log" | sed 's/^/    /' >&2 || true
    echo "    reproduce: $bin_dir/$t ${crash:-<input>}" >&2
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (logs in $target_dir/fuzz-<target>.log)" >&2
  exit 1
fi
echo "==> All $(echo "$targets" | wc -w) fuzz targets ran ${seconds} s each without a crash"
