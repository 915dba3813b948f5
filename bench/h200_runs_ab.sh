#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz, .carry/e2e.tgz
# (bench/h200_pack_e2e.sh) and .carry/test.tgz (bench/h200_pack_test.sh): the CUDA worker with two runs in flight
# (the default: the next batch stages and queues its work while the GPU computes the one before) against one at a
# time (SWITCHYARD_CUDA_RUNS_IN_FLIGHT=1), timed in turn in one call, end to end at Qwen3-30B-A3B's full size with six
# driver threads: 3 routers over 2 workers on 2 GPUs, then 2 routers over 1 worker (the runs where the workers'
# queues were the bound, bench/results/h200-moe.md). After the first run it builds nothing new and runs the CUDA
# backend's vitest (its GPU tests include many runs in flight against one at a time, bit for bit). Logs in $OUT.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=qwen3-moe
conc=256
ab_step() {
  local runs=$1 workers=$2 tag=$3
  shift 3
  export SWITCHYARD_CUDA_RUNS_IN_FLIGHT=$runs
  e2e_step "$workers" "$tag-f$runs" --drivers 6 "$@"
}
ab_step 2 2 r3 --routers 3 --gpus 2
tar xzf .carry/test.tgz
unset SWITCHYARD_CUDA_RUNS_IN_FLIGHT
node node_modules/vitest/vitest.mjs run expert-worker/src/backend expert-worker/src/gpu-tier.test.ts \
  > $OUT/vitest.log 2>&1
echo "vitest rc=$?"
grep -E "Test Files|Tests |FAIL|✗|×" $OUT/vitest.log | head
ab_step 1 2 r3 --routers 3 --gpus 2
ab_step 2 2 r3b --routers 3 --gpus 2
ab_step 1 1 r2 --routers 2
ab_step 2 1 r2 --routers 2
