#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (fuzz/README.md) for a while and
# prints, per target, the executions and the crashes found.
#
#   benches/fuzz.sh MINUTES [TARGET...]     # e.g. benches/fuzz.sh 10
#   benches/fuzz.sh --seconds N [TARGET...] # what .ci/test runs (N = 15)
#
# Targets run FUZZ_JOBS at a time (default 2), each under `nice -n 19`
# (FUZZ_NICE), on the corpus in fuzz/corpus/TARGET (kept between runs, not
# committed) seeded from fuzz/seeds/TARGET. A crash stops its target; the
# input is saved as fuzz/artifacts/TARGET/crash-* (replay it with
# `cargo +nightly fuzz run TARGET FILE`). Logs: fuzz/target/fuzz-logs/.
# Exits 1 if any target crashed or could not run, 2 on bad usage, 3 when
# there is no nightly toolchain or no cargo-fuzz (the message says which).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

usage() {
  echo "usage: benches/fuzz.sh MINUTES [TARGET...] | --seconds N [TARGET...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
if [ "$1" = "--seconds" ]; then
  [ $# -ge 2 ] || usage
  seconds=$2
  shift 2
else
  [[ "$1" =~ ^[0-9]+$ ]] || usage
  seconds=$(($1 * 60))
  shift
fi
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly)" >&2
  exit 3
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
  exit 3
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
jobs=${FUZZ_JOBS:-2}
niceness=${FUZZ_NICE:-19}

# One build of every target (debug assertions on, so `debug_assert!`s are
# findings too), then the binaries run directly: no cargo in the timing.
nice -n "$niceness" cargo +nightly fuzz build --debug-assertions
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=target/$triple/release
logs=target/fuzz-logs
mkdir -p "$logs"

run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  # Crashes of earlier runs are not this run's: count only new files.
  find "artifacts/$t" -type f -name '*-*' >"$logs/$t.before"
  local rc=0
  ASAN_OPTIONS=detect_odr_violation=0 nice -n "$niceness" "$bin/$t" \
    -artifact_prefix="artifacts/$t/" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    "corpus/$t" "seeds/$t" >"$logs/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$t.rc"
  # The scratch files of targets that write their input (tokens_file,
  # config_dropin) are named by pid.
  rm -rf /dev/shm/heartbeatd-fuzz-"$t"-* "${TMPDIR:-/tmp}"/heartbeatd-fuzz-"$t"-*
}

running=0
for t in "${targets[@]}"; do
  if [ ! -x "$bin/$t" ]; then
    echo "fuzz: no target $t (cargo +nightly fuzz list)" >&2
    exit 2
  fi
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=0
printf '\n%-18s %8s %14s %10s %8s %8s\n' target seconds executions exec/s corpus crashes
for t in "${targets[@]}"; do
  log=$logs/$t.log
  rc=$(cat "$logs/$t.rc")
  execs=$(sed -n 's/^stat::number_of_executed_units: //p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  [ -n "$secs" ] || secs=$seconds
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f -name '*-*' | sort | comm -13 <(sort "$logs/$t.before") - | wc -l)
  rate=$(( ${execs:-0} / (secs > 0 ? secs : 1) ))
  printf '%-18s %8s %14s %10s %8s %8s\n' "$t" "$secs" "${execs:-?}" "$rate" "$corpus" "$crashes"
  if [ "$crashes" -gt 0 ] || [ "$rc" -ne 0 ]; then
    failed=1
    echo "  $t: exit $rc, see $PWD/$log; new inputs in $PWD/artifacts/$t/" >&2
  fi
done
echo "(each target ${seconds}s, $jobs at a time, nice $niceness, $(date -u '+%Y-%m-%d %H:%M UTC'))"
exit "$failed"
