#!/bin/bash
# npm run fuzz: runs the PKCS#11 module's libFuzzer harnesses (p11-module/fuzz/),
# each for FUZZ_SECONDS (default 60), from the committed seed corpus (real enclave
# replies, scripts/fuzz-seeds.ts) plus what earlier runs found (build/fuzz/corpus).
# A crash, leak, sanitizer report or hang is saved under build/fuzz/crashes/ and
# makes the run fail; turn it into a regression input in
# p11-module/fuzz/regressions/<harness>/ (test/fuzz.test.ts replays those).
# Needs clang (apt-get install clang). FUZZ_JOBS runs harnesses in parallel.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
make -s -C "$root/p11-module" fuzz
status=0
run() {
  local h=$1 corpus=$root/build/fuzz/corpus/$1 crashes=$root/build/fuzz/crashes/$1
  mkdir -p "$corpus" "$crashes"
  local log=$root/build/fuzz/$h.log
  echo "fuzz: $h for ${seconds}s (log $log)" >&2
  # -timeout: one input taking over 10 s is a hang; the module's own request timeout is 10 ms here.
  if "$root/p11-module/build/fuzz/$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$crashes/" "$corpus" "$root/p11-module/fuzz/corpus/${h#fuzz_}" >"$log" 2>&1; then
    echo "fuzz: $h: $(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions, $(grep -o 'cov: [0-9]*' "$log" | tail -1), no findings" >&2
  else
    echo "fuzz: $h: FINDING (see $log and $crashes):" >&2
    grep -E 'ERROR|SUMMARY' "$log" | head -5 >&2
    return 1
  fi
}
pids=()
for h in fuzz_wire fuzz_module; do
  if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then run "$h" & pids+=($!); else run "$h" || status=1; fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
