#!/usr/bin/env bash
# The fuzz campaign (docs/fuzzing.md): every target of the scst-accel-fuzz crate for SECONDS
# each, one after another, under AFL++ (coverage-guided, persistent mode) when `cargo afl` is
# installed (fuzz/install-afl.sh), else in the structured random mode (seeded, no coverage
# guidance: said loudly). Prints, per target, executions and crashes, and a total; replays every
# crashing input to show its panic. Exit status 1 when any target crashed.
#
#   fuzz/run.sh [--seconds N] [--targets "scsi config ..."] [--mode afl|random] [--out DIR]
#               [--profile release|dev] [--jobs J]
#
# --out keeps AFL++'s queue and crashes (default target/fuzz-out, wiped first); --jobs runs J
# targets at a time (default 1: CI shares 2 cores). --profile dev uses the unoptimized
# fuzz_random that `cargo test` already built (CI: no extra build).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
targets="scsi config sca1 nvme loopback tcmu_netlink"
mode=auto
out=target/fuzz-out
profile=release
jobs=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done
if [[ $mode == auto ]]; then
  if cargo afl --version >/dev/null 2>&1; then mode=afl; else mode=random; fi
fi
rm -rf "$out" && mkdir -p "$out"
start=$(date +%s)

if [[ $mode == afl ]]; then
  echo "== fuzz: AFL++ (coverage-guided), ${seconds}s per target: $targets"
  # The instrumented build has its own target dir: AFL's flags would invalidate the normal one.
  build_start=$(date +%s)
  cargo afl build --release --locked -p scst-accel-fuzz --features afl --target-dir target/afl
  echo "fuzz: instrumented build took $(($(date +%s) - build_start))s"
  # Built with the AFL binaries; outside afl-fuzz it runs as a plain program.
  replayer=target/afl/release/fuzz_random
else
  echo "== fuzz: STRUCTURED RANDOM MODE, NO COVERAGE GUIDANCE (AFL++ is not installed here:"
  echo "   run fuzz/install-afl.sh for the coverage-guided campaign), ${seconds}s per target: $targets"
  if [[ $profile == release ]]; then
    cargo build --release --locked -p scst-accel-fuzz --bin fuzz_random
    replayer=target/release/fuzz_random
  else
    cargo build --locked -p scst-accel-fuzz --bin fuzz_random
    replayer=target/debug/fuzz_random
  fi
fi

run_one() {
  local t=$1
  if [[ $mode == afl ]]; then
    # AFL_NO_UI: plain log; the CPU-frequency and core_pattern checks need root on the host,
    # which CI and shared machines do not give: skipped (they cost speed, not correctness).
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
      AFL_SKIP_CRASHES=1 AFL_FAST_CAL=1 \
      cargo afl fuzz -V "$seconds" -i "fuzz/corpus/$t" -o "$out/$t" "target/afl/release/afl_$t" \
      > "$out/$t.log" 2>&1 || { echo "$t: afl-fuzz failed:"; tail -20 "$out/$t.log"; return 1; }
  else
    "$replayer" run "$t" "$seconds" "${FUZZ_SEED:-$RANDOM}" "$out/$t/crashes" > "$out/$t.log" 2>&1 || true
  fi
}

pids=()
for t in $targets; do
  run_one "$t" &
  pids+=($!)
  if [[ ${#pids[@]} -ge $jobs ]]; then
    wait "${pids[0]}" || true
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || true; done

total_execs=0
total_crashes=0
printf '%-10s %14s %8s %10s %s\n' target executions crashes execs/s note
for t in $targets; do
  execs=0 crashes=0 note=""
  if [[ $mode == afl ]]; then
    stats="$out/$t/default/fuzzer_stats"
    if [[ -f $stats ]]; then
      execs=$(awk -F: '/^execs_done/ {gsub(/ /,"",$2); print $2}' "$stats")
      crashes=$(awk -F: '/^saved_crashes/ {gsub(/ /,"",$2); print $2}' "$stats")
      note="corpus $(awk -F: '/^corpus_count/ {gsub(/ /,"",$2); print $2}' "$stats"), edges $(awk -F: '/^edges_found/ {gsub(/ /,"",$2); print $2}' "$stats")"
    else
      note="no fuzzer_stats (see $out/$t.log)"
      crashes=1
    fi
  else
    line=$(grep -E "^$t executions=" "$out/$t.log" || true)
    execs=$(sed -n 's/.*executions=\([0-9]*\).*/\1/p' <<<"$line")
    crashes=$(sed -n 's/.*crashes=\([0-9]*\).*/\1/p' <<<"$line")
    if [[ -z $line ]]; then execs=0; crashes=1; note="no result (see $out/$t.log)"; fi
  fi
  total_execs=$((total_execs + execs))
  total_crashes=$((total_crashes + crashes))
  printf '%-10s %14s %8s %10s %s\n' "$t" "$execs" "$crashes" "$((execs / (seconds > 0 ? seconds : 1)))" "$note"
done
printf '%-10s %14s %8s\n' total "$total_execs" "$total_crashes"
echo "fuzz: mode $mode, ${seconds}s per target, $(($(date +%s) - start))s in all"

if [[ $total_crashes -gt 0 ]]; then
  echo "== fuzz: CRASHES (each must become a regression input in fuzz/corpus/<target>/ and a fix)"
  for t in $targets; do
    for f in "$out/$t"/default/crashes/id* "$out/$t"/crashes/*; do
      [[ -f $f ]] || continue
      echo "-- $t: $f"
      "$replayer" replay "$t" "$f" 2>&1 | grep -E "panicked|invariant|CRASH" | head -3 || true
    done
  done
  exit 1
fi
