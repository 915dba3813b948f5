#!/usr/bin/env bash
# One-call H200 iteration for a kernel change (device time is scarce): build, full test_moe, the chosen cells with
# library-knob variants (first the safe knobs, then, in a separate process with a short timeout, knobs that might
# stall), an optional per-kernel profile, and compute-sanitizer memcheck on the quick test. Each step has its own
# timeout; everything lands in $OUT.
# Usage, from the repo root there:
#   bash bench/h200_iter.sh VARIANTS TS [RISKY_VARIANTS] [PROFILE_SHAPES PROFILE_TS] [--tune]
set -uo pipefail
OUT=${OUT:-/tmp/out}
VARIANTS=${1:-"SY_MOE_TALL_AVG=0"}
TS=${2:-1024,8192}
RISKY=${3:-}
PSHAPES=${4:-}
PTS=${5:-8192}
TUNE=--no-tune
[ "${6:-}" = "--tune" ] && TUNE=
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
summary() {
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("peak", round(d["peak_tflops"]), "bw", round(d["bw_tbs"], 2))
for r in d["rows"]:
    print(r["shape"], r["T"], "ms %.4f floor %.4f pct %.1f gmm %.4f" % (r["ms"], r["floor_ms"], 100 * r["pct_floor"],
          r["torch_grouped_mm_ms"]), "relerr %.1e" % r["relerr"])
    print("   tune", r["tune_ms"], "var", r["variant_ms"])
PY
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader
rm -rf $B
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
timeout 240 $B/test_moe > $OUT/test.log 2>&1
say "test rc=$? $(tail -1 $OUT/test.log)"
grep -E "FAIL" $OUT/test.log
mkdir -p /tmp/b1 /tmp/b2 /tmp/b3
PYTHONUNBUFFERED=1 OUT=/tmp/b1 timeout 240 python3 bench/h200_moe.py $B/libsy_moe.so --ts "$TS" --no-loop $TUNE \
  --variants "$VARIANTS" > $OUT/bench-iter.log 2>&1
say "bench rc=$?"
cp /tmp/b1/h200-moe.json $OUT/h200-moe-iter.json 2>/dev/null && summary /tmp/b1/h200-moe.json
if [ -n "$RISKY" ]; then
  BENCH_TRACE=1 PYTHONUNBUFFERED=1 OUT=/tmp/b3 timeout 120 python3 bench/h200_moe.py $B/libsy_moe.so --ts "$TS" \
    --no-loop --no-tune --variants "$RISKY" > $OUT/bench-risky.log 2>&1
  say "risky bench rc=$?"
  cp /tmp/b3/h200-moe.json $OUT/h200-moe-risky.json 2>/dev/null && summary /tmp/b3/h200-moe.json
fi
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
