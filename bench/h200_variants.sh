#!/usr/bin/env bash
# One H200 call that tries library knobs against each other: build; the whole quick test suite with the defaults
# (QUICK=1) and, for each setting in TEST_ENVS, exported for every case; the cases and stresses whose names contain
# CASES (a stall prints STALL and exits); the compute-side cells (SHAPES x TS) timed with each of VARIANTS in the same
# run (variant_ms); compute-sanitizer memcheck of the quick cases matching MEMCHECK. Each step is cut at a time limit
# so the call stays inside LIMIT seconds (the cases step inside CASE_S, default 60; the quick suite inside QUICK_S,
# default 300: 127 cases took > 200 s on 2026-11-29). FULL=1: first the whole test_moe (cases and stresses, within
# TEST_S, default 330). BENCH_ARGS: more options for bench/h200_moe.py (e.g. --long-variants). Usage, from the repo
# root there:
#   CASES=cluster VARIANTS="SY_MOE_CLUSTER=2;SY_MOE_CLUSTER=0" bash bench/h200_variants.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
LIMIT=${LIMIT:-230}
CASES=${CASES:-cluster}
QUICK=${QUICK:-0}
TEST_ENVS=${TEST_ENVS:-}
SHAPES=${SHAPES:-mixtral-8x7b,qwen3-30b-a3b,deepseek-v3}
TS=${TS:-1024,8192}
VARIANTS=${VARIANTS:-SY_MOE_CLUSTER=2;SY_MOE_CLUSTER=1;SY_MOE_CLUSTER=0}
MEMCHECK=${MEMCHECK:-awkward-257}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
left() { local t=$((LIMIT - SECONDS - $1)); [ $t -lt 5 ] && t=5; echo $t; }
passed() { grep -qE "^[0-9]+ passed, 0 failed" "$1"; }
rm -rf $B
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
ok=1
if [ "${FULL:-0}" = 1 ]; then
  timeout ${TEST_S:-330} $B/test_moe > $OUT/full-test.log 2>&1
  say "whole test_moe rc=$? $(tail -1 $OUT/full-test.log)"
  grep -E "FAIL|STALL" $OUT/full-test.log | head
  passed $OUT/full-test.log || ok=0
fi
if [ "$QUICK" = 1 ]; then
  timeout ${QUICK_S:-300} $B/test_moe --quick --stall-s 10 > $OUT/quick-test.log 2>&1
  say "quick suite rc=$? $(tail -1 $OUT/quick-test.log)"
  grep -E "FAIL|STALL" $OUT/quick-test.log | head
  passed $OUT/quick-test.log || ok=0
fi
IFS=';' read -ra envs <<< "$TEST_ENVS"
for i in "${!envs[@]}"; do
  timeout 200 env ${envs[$i]} $B/test_moe --quick --stall-s 10 > $OUT/quick-test-env$i.log 2>&1
  say "quick suite with ${envs[$i]} rc=$? $(tail -1 $OUT/quick-test-env$i.log)"
  grep -E "FAIL|STALL" $OUT/quick-test-env$i.log | head
  passed $OUT/quick-test-env$i.log || ok=0
done
timeout ${CASE_S:-60} $B/test_moe --quick --case "$CASES" --stall-s 10 > $OUT/cases-test.log 2>&1
say "cases rc=$? $(tail -1 $OUT/cases-test.log)"
grep -E "FAIL|STALL" $OUT/cases-test.log | head
passed $OUT/cases-test.log || ok=0
timeout 60 $B/test_moe --stress --case "$CASES" --stall-s 10 > $OUT/cases-stress.log 2>&1
say "stress rc=$? $(tail -1 $OUT/cases-stress.log)"
grep -E "FAIL|STALL" $OUT/cases-stress.log | head
passed $OUT/cases-stress.log || ok=0
if [ $ok = 1 ]; then
  mkdir -p /tmp/vb
  PYTHONUNBUFFERED=1 OUT=/tmp/vb timeout $(left 40) python3 bench/h200_moe.py $B/libsy_moe.so \
    --shapes "$SHAPES" --ts "$TS" --no-tune --no-loop --rounds ${ROUNDS:-3} ${BENCH_ARGS:-} --variants "$VARIANTS" > $OUT/variants-bench.log 2>&1
  say "bench rc=$?"
  cp /tmp/vb/h200-moe.json $OUT/variants-bench.json 2>/dev/null
  python3 - $OUT/variants-bench.log <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{") and '"variant_ms"' in line:
        r = json.loads(line)
        print(r["shape"], r["T"], "default %.4f" % r["ms"], "floor %.4f" % r["floor_ms"], r["variant_ms"],
              r.get("rounds_ms"))
        if "peak_rounds_tflops" in r:
            med = lambda v: sorted(v)[len(v) // 2] if v else None
            print("   ceiling per round", r["peak_rounds_tflops"], "pct_floor %.3f same-rounds %.3f"
                  % (r["pct_floor"], r["pct_floor_same_rounds"]),
                  "median MHz/W", {k: (med(v), med(r["power_w"][k])) for k, v in r["clocks_mhz"].items()})
PY
  timeout $(left 5) compute-sanitizer --tool memcheck $B/test_moe --quick --case "$MEMCHECK" > $OUT/memcheck.log 2>&1
  say "memcheck rc=$? $(grep -E 'ERROR SUMMARY|passed' $OUT/memcheck.log | tr '\n' ' ')"
fi
exit 0
