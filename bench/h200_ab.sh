#!/usr/bin/env bash
# One H200 call for a kernel change: build the working tree's library and test, the quick test suite (QUICK_TEST=0:
# skip), then bench/h200_anchor.py with --base: ours beside the base build (.carry/base-cuda, the cuda folder at the
# commit before the change: `bash bench/h200_ab.sh --pack` here makes it from HEAD) in the same rotated rounds, with
# the cuBLAS / grouped_mm anchors. Carry .carry/base-cuda. Usage, from the repo root there:
#   [CELLS=...] [ROUNDS=5] bash bench/h200_ab.sh
set -uo pipefail
if [ "${1:-}" = --pack ]; then
  rm -rf .carry/base-cuda && mkdir -p .carry/base-cuda
  git archive HEAD expert-worker/native/cuda | tar -x -C .carry/base-cuda
  echo "base: $(git rev-parse --short HEAD) in .carry/base-cuda"
  exit 0
fi
OUT=${OUT:-/tmp/out}
B=expert-worker/native/cuda/build
BB=.carry/base-cuda/expert-worker/native/cuda
say() { echo "[${SECONDS}s] $*"; }
rm -rf $B $BB/build
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 &
p1=$!
make -C $BB -j16 build/libsy_moe.so > $OUT/make-base.log 2>&1 &
p2=$!
wait $p1 || { tail -30 $OUT/make.log; exit 1; }
wait $p2 || { tail -30 $OUT/make-base.log; exit 1; }
say built
if [ "${QUICK_TEST:-1}" = 1 ]; then
  timeout 200 $B/test_moe --quick --stall-s 20 > $OUT/quick-test.log 2>&1
  say "quick suite rc=$? $(tail -1 $OUT/quick-test.log)"
  grep -E "FAIL|STALL" $OUT/quick-test.log | head
fi
PYTHONUNBUFFERED=1 OUT=$OUT timeout ${LIMIT:-400} python3 bench/h200_anchor.py $B/libsy_moe.so --base $BB/build/libsy_moe.so \
  --cells "${CELLS:-mixtral-8x7b:1024,qwen3-30b-a3b:8192,deepseek-v3:8192,mixtral-8x7b:8192,qwen3-30b-a3b:1024,deepseek-v3:1024}" \
  --rounds "${ROUNDS:-5}" > $OUT/anchor.log 2>&1
say "anchor rc=$?"
grep -A30 "^# Balanced" $OUT/anchor.log | head -14
grep -o '"base_vs_ours_relerr": [0-9.e-]*' $OUT/anchor.log
