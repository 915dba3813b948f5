#!/usr/bin/env bash
# One H200 call for the 128-row persistent GEMM stall fix (issue 4): builds the current library and, from
# .carry/oldcuda (the previous commit's cuda sources with the 192-token-tile cap lifted, plus the current test_moe.cu;
# made by bench/h200_pack_persist.sh), the unfixed one; runs the persistent stress (test_moe --stress: Qwen3 T=8192
# forced persistent, 40 back-to-back calls with PDL, a watchdog that reports a STALL) on both; times the compute-side
# cells with the library's default choice and with the persistent kernel forced (both GEMMs; only GEMM2; only
# GEMM1); then the full test_moe and compute-sanitizer memcheck on the quick test. Every step has a timeout and
# the whole stays within LIMIT seconds. Usage, from the repo root there (carry .carry/oldcuda):
#   bash bench/h200_persist.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
LIMIT=${LIMIT:-340}
B=expert-worker/native/cuda/build
OLD=.carry/oldcuda
say() { echo "[${SECONDS}s] $*"; }
tl() { local t=$((LIMIT - SECONDS - $1)); [ $t -lt 10 ] && t=10; echo $t; }  # time left minus a reserve
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
rm -rf $B $OLD/build
(timeout 150 make -C $OLD -j8 build/test_moe > $OUT/make-old.log 2>&1; echo "old build rc=$?" >> $OUT/make-old.log) &
timeout 150 make -C expert-worker/native/cuda -j8 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
wait
say "built; $(tail -1 $OUT/make-old.log)"

# 1. the fixed library: persistent stress (also part of the full test below; first, so a stall shows early)
timeout 90 $B/test_moe --stress --stall-s 15 > $OUT/stress-new.log 2>&1
say "stress (fixed) rc=$?"
cat $OUT/stress-new.log
# 2. the unfixed library (cap lifted): the same stress; a STALL line and rc=3 reproduce the hang
timeout 40 $OLD/build/test_moe --stress --stall-s 15 > $OUT/stress-old.log 2>&1
say "stress (unfixed) rc=$?"
cat $OUT/stress-old.log

# 3. compute-side cells: default vs persistent forced (both GEMMs / GEMM2 only / GEMM1 only)
mkdir -p /tmp/b1
PYTHONUNBUFFERED=1 OUT=/tmp/b1 timeout $(tl 130) python3 bench/h200_moe.py $B/libsy_moe.so --ts 1024,8192 --no-tune \
  --no-loop --variants "SY_MOE_ENGINE=3;SY_MOE_PERSIST_MASK=2;SY_MOE_PERSIST_MASK=1" > $OUT/bench-persist.log 2>&1
say "bench rc=$?"
cp /tmp/b1/h200-moe.json $OUT/h200-moe-persist.json 2>/dev/null
python3 - /tmp/b1/h200-moe.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("peak", round(d["peak_tflops"]), "bw", round(d["bw_tbs"], 2))
for r in d["rows"]:
    print(r["shape"], r["T"], "default %.4f floor %.4f (%.1f%%)" % (r["ms"], r["floor_ms"], 100 * r["pct_floor"]),
          "relerr %.1e" % r["relerr"], "variants", r["variant_ms"])
PY

# 4. full correctness test (includes the stress cases), then memcheck on the quick test
timeout $(tl 70) $B/test_moe > $OUT/test.log 2>&1
say "test rc=$? $(tail -1 $OUT/test.log)"
grep -E "FAIL|stress" $OUT/test.log
timeout $(tl 5) compute-sanitizer --tool memcheck --leak-check full $B/test_moe --quick > /tmp/memcheck.log 2>&1
say "memcheck rc=$?"
tail -25 /tmp/memcheck.log > $OUT/memcheck.log
tail -3 $OUT/memcheck.log
exit 0
