#!/usr/bin/env bash
# One-call H200 iteration for the dynamically scheduled persistent GEMM (device time is scarce): build, the quick
# test and the persistent stress first with short timeouts (a scheduling bug shows as a stall: stop there instead
# of burning the call), then the full test, the chosen cells with knob variants, an optional per-kernel profile,
# and compute-sanitizer memcheck on the quick test. Everything lands in $OUT.
# Usage, from the repo root there: bash bench/h200_dyn.sh VARIANTS TS [PROFILE_SHAPES PROFILE_TS]
set -uo pipefail
OUT=${OUT:-/tmp/out}
VARIANTS=${1:-"SY_MOE_DYN=0"}
TS=${2:-1024,8192}
PSHAPES=${3:-}
PTS=${4:-8192}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader
rm -rf $B
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
timeout 90 $B/test_moe --quick --stall-s 10 > $OUT/test-quick.log 2>&1
rc=$?
say "quick test rc=$rc $(tail -1 $OUT/test-quick.log)"
grep -E "FAIL" $OUT/test-quick.log
if [ $rc -ne 0 ]; then
  # a stalled or failing case: run it alone under each knob that turns one part of the change off
  C=$(grep -m1 -oE "^FAIL [^ :]+" $OUT/test-quick.log | cut -d' ' -f2)
  [ -z "$C" ] && C=$(tail -1 $OUT/test-quick.log | awk '{print $2}')
  say "isolating case '$C'"
  for V in SY_MOE_NOP=0 SY_MOE_WG_SPLIT=0 SY_MOE_DYN=0 SY_MOE_PDL=0 "SY_MOE_PDL=0 SY_MOE_WG_SPLIT=0"; do
    env $V timeout 30 $B/test_moe --quick --case "$C" --stall-s 5 > /tmp/iso.log 2>&1
    say "  '$V' rc=$? $(grep -E 'PASS|FAIL' /tmp/iso.log | head -2 | cut -c1-150 | tr '\n' ' ')"
  done
  exit 2
fi
timeout 90 $B/test_moe --stress --stall-s 10 > $OUT/test-stress.log 2>&1
rc=$?
say "stress rc=$rc"
cat $OUT/test-stress.log | grep -E "PASS|FAIL"
[ $rc -ne 0 ] && exit 3
mkdir -p /tmp/b1 /tmp/b2
PYTHONUNBUFFERED=1 OUT=/tmp/b1 timeout 200 python3 bench/h200_moe.py $B/libsy_moe.so --ts "$TS" --no-loop --no-tune \
  --variants "$VARIANTS" > $OUT/bench-iter.log 2>&1
say "bench rc=$?"
cp /tmp/b1/h200-moe.json $OUT/h200-moe-iter.json 2>/dev/null && python3 - /tmp/b1/h200-moe.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("peak", round(d["peak_tflops"]), "bw", round(d["bw_tbs"], 2))
for r in d["rows"]:
    print(r["shape"], r["T"], "ms %.4f floor %.4f pct %.1f gmm %.4f" % (r["ms"], r["floor_ms"], 100 * r["pct_floor"],
          r["torch_grouped_mm_ms"]), "relerr %.1e" % r["relerr"])
    print("   var", r["variant_ms"])
PY
timeout 200 $B/test_moe > $OUT/test.log 2>&1
say "full test rc=$? $(tail -1 $OUT/test.log)"
grep -E "FAIL" $OUT/test.log
if [ -n "$PSHAPES" ]; then
  PYTHONUNBUFFERED=1 OUT=/tmp/b2 timeout 100 python3 bench/h200_moe.py $B/libsy_moe.so --shapes "$PSHAPES" \
    --ts "$PTS" --no-loop --no-tune --profile > $OUT/bench-profile.log 2>&1
  say "profile rc=$?"
  grep -o '"kernels_us": {[^}]*}' $OUT/bench-profile.log
fi
timeout 150 compute-sanitizer --tool memcheck --leak-check full $B/test_moe --quick --stall-s 120 > /tmp/memcheck.log 2>&1
say "memcheck rc=$?"
tail -25 /tmp/memcheck.log > $OUT/memcheck.log
tail -3 $OUT/memcheck.log
exit 0
