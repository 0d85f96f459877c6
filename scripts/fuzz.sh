#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, nightly Rust) for SECONDS
# each (default 20) and fails if any crashes, printing the crashing input's path.
#
#   scripts/fuzz.sh [SECONDS]
#
# Installs nightly Rust and cargo-fuzz when they are missing, builds all targets once,
# then runs each one on its checked-in seeds (fuzz/corpus/<target>, read only) plus a
# working corpus that grows run after run ($FUZZ_TARGET_DIR/corpus/<target>). Targets
# run side by side, one per CPU. Keep $FUZZ_TARGET_DIR (default fuzz/target) between CI runs: builds
# are incremental and the working corpus carries over. An input that runs longer than
# 30 s counts as a crash (libFuzzer's hang detector; every target takes milliseconds).
#
# Environment:
#   FUZZ_TARGET_DIR   where builds, working corpora, crashes and logs go (fuzz/target)
#   FUZZ_TARGETS      space-separated subset of targets (default: all)
#   FUZZ_PARALLEL     targets run at once (default: the number of CPUs)
#   FUZZ_SANITIZER    cargo-fuzz sanitizer (default none: the crates fuzzed forbid
#                     unsafe code, so AddressSanitizer would mostly cost build and run
#                     time; use "address" to check dependencies' unsafe code too)
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
parallel=${FUZZ_PARALLEL:-$(nproc 2>/dev/null || echo 1)}
# The fuzz workspace has its own target dir; a CARGO_TARGET_DIR meant for the main
# workspace must not capture it.
unset CARGO_TARGET_DIR

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "==> Installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> Installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cd fuzz && cargo +nightly fuzz list)}
count=$(echo "$targets" | wc -w)

echo "==> Building $count fuzz targets (sanitizer $sanitizer)"
start=$SECONDS
(cd fuzz && cargo +nightly fuzz build -s "$sanitizer" --target-dir "$target_dir")
echo "    built in $((SECONDS - start)) s"

# Run the built binaries directly: `cargo fuzz run` would rebuild first, and a run is
# then exactly the binary and its libFuzzer flags.
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"

# Runs one target; its log is $target_dir/fuzz-<target>.log, its exit status the
# fuzzer's (non-zero on a crash, a timeout or running out of memory).
run_target() {
  local t=$1
  mkdir -p "$target_dir/corpus/$t" "$target_dir/artifacts/$t"
  "$bin_dir/$t" "$target_dir/corpus/$t" "fuzz/corpus/$t" -max_total_time="$seconds" -timeout=30 \
    -artifact_prefix="$target_dir/artifacts/$t/" -print_final_stats=1 \
    >"$target_dir/fuzz-$t.log" 2>&1
}

# Prints a target's figures (executions, speed, new inputs) and, on a crash, where the
# input is and how to replay it. Returns the target's status.
report() {
  local t=$1 status=$2 log="$target_dir/fuzz-$1.log" crash
  printf '    %-20s %s\n' "$t" "$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$log" |
    sed 's/^stat:://; s/number_of_executed_units/execs/; s/average_exec_per_sec/exec\/s/; s/new_units_added/new/; s/: */ /' |
    tr '\n' ' ')"
  if [ "$status" -ne 0 ]; then
    crash=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
    echo "FAIL: $t crashed (exit $status); input: ${crash:-none written, see $log}" >&2
    grep -E -m 5 "panicked at|assertion|ERROR: libFuzzer" "$log" | sed 's/^/    /' >&2 || true
    echo "    replay: $bin_dir/$t ${crash:-<input>}" >&2
  fi
  return "$status"
}

echo "==> Running each target for $seconds s, $parallel at a time"
failed=()
batch=()
flush() {
  local -A pid_of=()
  local t status
  for t in "${batch[@]}"; do
    run_target "$t" &
    pid_of[$t]=$!
  done
  for t in "${batch[@]}"; do
    status=0
    wait "${pid_of[$t]}" || status=$?
    report "$t" "$status" || failed+=("$t")
  done
  batch=()
}
for t in $targets; do
  batch+=("$t")
  if [ ${#batch[@]} -ge "$parallel" ]; then flush; fi
done
if [ ${#batch[@]} -gt 0 ]; then flush; fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (logs: $target_dir/fuzz-<target>.log)" >&2
  exit 1
fi
echo "==> All $count fuzz targets ran $seconds s each without a crash"
