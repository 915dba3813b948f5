#!/usr/bin/env bash
# Prepared for the next device time (not run yet). On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo
# root, with .carry/node.xz and .carry/e2e.tgz (bench/h200_pack_e2e.sh): one router against two router replicas
# (the local mode's --routers) with the load from three driver threads, one cuda worker, then two routers over two
# workers on two GPUs; all in one call, in turn. Logs in $OUT.
#   ROUTERS_FAMILY (default qwen3-moe), ROUTERS_CONC (default 128).
source bench/h200_e2e_steps.sh
family=${ROUTERS_FAMILY:-qwen3-moe}
conc=${ROUTERS_CONC:-128}
e2e_step 1 r1 --drivers 3
e2e_step 1 r2 --drivers 3 --routers 2
e2e_step 2 r2 --drivers 3 --routers 2 --gpus 2
# ROUTERS_DSV3=1: then DeepSeek-V3 at full size, 64 sequences, one worker, three driver threads
if [ -n "${ROUTERS_DSV3:-}" ]; then
  family=deepseek-v3 conc=64
  e2e_step 1 d3 --drivers 3
fi
