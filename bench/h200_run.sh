#!/usr/bin/env bash
# Runs on the H200 device machine from the repo root: correctness test, compute-sanitizer memcheck, benchmark.
# Uses prebuilt binaries in expert-worker/native/cuda/build when they run there, else builds with the local nvcc.
set -uo pipefail
OUT=${OUT:-/tmp/out}
B=expert-worker/native/cuda/build
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
if ! $B/test_moe --help-probe >/dev/null 2>&1 && [ ! -x $B/test_moe ]; then
  make -C expert-worker/native/cuda -j16 || exit 1
fi
MODE=${1:-all}
if [ "$MODE" = all ] || [ "$MODE" = test ]; then
  $B/test_moe 2>&1 | tee $OUT/test.log
  rc=$?
  timeout 240 compute-sanitizer --tool memcheck --leak-check full $B/test_moe --quick --stall-s 120 2>&1 | tail -25 | tee $OUT/memcheck.log
  [ $rc -ne 0 ] && exit $rc
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  PYTHONUNBUFFERED=1 OUT=$OUT python3 bench/h200_moe.py $B/libsy_moe.so "${@:2}" 2>&1 | tee $OUT/bench.log
fi
