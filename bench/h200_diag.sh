#!/usr/bin/env bash
# Lean H200 call: build, trace the one case that hung (one-tile GEMM2 split under graph capture, replayed twice),
# the quick test without it, the persistent stress, and the chosen cells with knob variants (no baselines' loop).
# Usage, from the repo root there: bash bench/h200_diag.sh VARIANTS TS
set -uo pipefail
OUT=${OUT:-/tmp/out}
VARIANTS=${1:-"SY_MOE_DYN=0"}
TS=${2:-1024,8192}
C=wgmma-gemm2-split2-awkward-graph
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
rm -rf $B
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
for V in "SY_MOE_NOP=0" "TEST_ONE_REPLAY=1" "SY_MOE_PDL=0"; do
  env $V TEST_TRACE=1 timeout 25 $B/test_moe --quick --case $C --stall-s 5 > /tmp/d.log 2>&1
  say "diag '$V' rc=$?: $(grep -E 'trace|PASS|FAIL' /tmp/d.log | cut -c1-110 | tail -4 | tr '\n' '|')"
  cat /tmp/d.log >> $OUT/diag.log
done
timeout 80 $B/test_moe --quick --case "!$C" --stall-s 10 > $OUT/test-quick.log 2>&1
say "quick test (without $C) rc=$? $(tail -1 $OUT/test-quick.log)"
grep FAIL $OUT/test-quick.log
timeout 60 $B/test_moe --stress --stall-s 10 > $OUT/test-stress.log 2>&1
say "stress rc=$?"; grep -E "PASS|FAIL" $OUT/test-stress.log | cut -c1-150
mkdir -p /tmp/b1
PYTHONUNBUFFERED=1 OUT=/tmp/b1 timeout 170 python3 bench/h200_moe.py $B/libsy_moe.so --ts "$TS" --no-loop --no-tune \
  --variants "$VARIANTS" > $OUT/bench-iter.log 2>&1
say "bench rc=$?"
cp /tmp/b1/h200-moe.json $OUT/h200-moe-iter.json 2>/dev/null && python3 - /tmp/b1/h200-moe.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("peak", round(d["peak_tflops"]), "bw", round(d["bw_tbs"], 2))
for r in d["rows"]:
    print(r["shape"][:8], r["T"], "ms %.4f pct %.1f gmm %.4f" % (r["ms"], 100 * r["pct_floor"], r["torch_grouped_mm_ms"]),
          "var", {k.replace("SY_MOE_", ""): v for k, v in r["variant_ms"].items()})
PY
exit 0
