#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz and .carry/e2e.tgz
# (bench/h200_pack_e2e.sh): how the local mode's end to end scales with router replicas (--routers) and workers on
# GPUs (--gpus), with the load from six driver threads so that the load generator is not the bound (three were, at
# ~1 core each, in the 03:33 UTC call of 2026-11-30). Qwen3-30B-A3B at full size; all in one call, in turn. Logs in $OUT.
#   SCALE_FAMILY (default qwen3-moe), SCALE_DRIVERS (default 6).
source bench/h200_e2e_steps.sh
family=${SCALE_FAMILY:-qwen3-moe}
n=${SCALE_DRIVERS:-6}
conc=128
e2e_step 1 r1-d$n --drivers $n
e2e_step 1 r2-d$n --drivers $n --routers 2
e2e_step 2 r2-d$n --drivers $n --routers 2 --gpus 2
conc=256
e2e_step 1 r1-d$n --drivers $n
e2e_step 2 r2-d$n --drivers $n --routers 2 --gpus 2
e2e_step 2 r3-d$n --drivers $n --routers 3 --gpus 2
