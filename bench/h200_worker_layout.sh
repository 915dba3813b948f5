#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz, .carry/e2e.tgz and
# .carry/test.tgz (bench/h200_pack_e2e.sh, bench/h200_pack_test.sh): the tiny end-to-end check and the CUDA
# vitest, then the two ways to put one pool on two GPUs, timed in one call, in turn: one worker over both GPUs (its
# experts split across the devices inside the worker), and two workers with one GPU each (--gpus 2: the placement
# plan splits the experts across the workers). DeepSeek-V3 at full size, 2 routers, 6 driver threads, $conc sequences.
# The first layout runs again last, so that drift within the call shows (LAYOUT_ORDER=BAB swaps the order). Logs in $OUT (layout-logs.tgz).
#   LAYOUT_FAMILY (default deepseek-v3), LAYOUT_CONC (default 256), E2E_SECONDS (default 8).
export E2E_SECONDS=${E2E_SECONDS:-8}
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=${LAYOUT_FAMILY:-deepseek-v3}
conc=${LAYOUT_CONC:-256}
if [ -z "${LAYOUT_NO_TINY:-}" ]; then tiny_check_and_vitest; fi
# LAYOUT_ORDER=BAB: two workers first and last, one worker over both GPUs between (the second call's order)
if [ "${LAYOUT_ORDER:-ABA}" = BAB ]; then
  e2e_step 2 pergpua --drivers 6 --routers 2 --gpus 2
  e2e_step 1 over2 --drivers 6 --routers 2
  e2e_step 2 pergpub --drivers 6 --routers 2 --gpus 2
else
  e2e_step 1 over2a --drivers 6 --routers 2
  e2e_step 2 pergpu --drivers 6 --routers 2 --gpus 2
  e2e_step 1 over2b --drivers 6 --routers 2
fi
e2e_pack layout "e2e-$family-*"
