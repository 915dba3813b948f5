#!/usr/bin/env bash
# One-call H200 iteration for a kernel change (device time is scarce): build, full test_moe, the compute-side cells
# (T = 1024, 8192) with the engine/tile sweep and library-knob variants, a per-kernel profile of chosen cells, and
# compute-sanitizer memcheck on the quick test. Each step has its own timeout; everything lands in $OUT.
# Usage, from the repo root there: bash bench/h200_iter.sh "VARIANTS" "PROFILE_SHAPES" "PROFILE_TS"
set -uo pipefail
OUT=${OUT:-/tmp/out}
VARIANTS=${1:-"SY_MOE_TALL_AVG=0"}
PSHAPES=${2:-qwen3-30b-a3b}
PTS=${3:-8192}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader
rm -rf $B
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
timeout 150 $B/test_moe > $OUT/test.log 2>&1
say "test rc=$? $(tail -1 $OUT/test.log)"
grep -E "FAIL|bm256" $OUT/test.log
mkdir -p /tmp/b1 /tmp/b2
PYTHONUNBUFFERED=1 OUT=/tmp/b1 timeout 240 python3 bench/h200_moe.py $B/libsy_moe.so --ts 1024,8192 --no-loop \
  --variants "$VARIANTS" > $OUT/bench-iter.log 2>&1
say "bench rc=$?"
cp /tmp/b1/h200-moe.json $OUT/h200-moe-iter.json 2>/dev/null
python3 - <<'PY'
import json
d = json.load(open("/tmp/b1/h200-moe.json"))
print("peak", round(d["peak_tflops"]), "bw", round(d["bw_tbs"], 2))
for r in d["rows"]:
    print(r["shape"], r["T"], "ms %.4f floor %.4f pct %.1f gmm %.4f" % (r["ms"], r["floor_ms"], 100 * r["pct_floor"],
          r["torch_grouped_mm_ms"]), "relerr %.1e" % r["relerr"])
    print("   tune", r["tune_ms"], "\n   var", r["variant_ms"])
PY
PYTHONUNBUFFERED=1 OUT=/tmp/b2 timeout 100 python3 bench/h200_moe.py $B/libsy_moe.so --shapes "$PSHAPES" --ts "$PTS" \
  --no-loop --no-tune --profile > $OUT/bench-profile.log 2>&1
say "profile rc=$?"
grep -o '"kernels_us": {[^}]*}' $OUT/bench-profile.log
timeout 150 compute-sanitizer --tool memcheck --leak-check full $B/test_moe --quick > /tmp/memcheck.log 2>&1
say "memcheck rc=$?"
tail -25 /tmp/memcheck.log > $OUT/memcheck.log
tail -3 $OUT/memcheck.log
