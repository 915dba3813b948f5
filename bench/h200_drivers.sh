#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz and .carry/e2e.tgz
# (bench/h200_pack_e2e.sh): end to end with the load from one driver thread and from several (the local mode's
# --drivers), one cuda worker, then two workers on two GPUs (--gpus 2); all in one call, in turn. Logs in $OUT.
#   DRIVERS_FAMILY (default qwen3-moe), DRIVERS_CONC (default 128), DRIVERS_N (default 3).
source bench/h200_e2e_steps.sh
family=${DRIVERS_FAMILY:-qwen3-moe}
conc=${DRIVERS_CONC:-128}
n=${DRIVERS_N:-3}
e2e_step 1 d1 --drivers 1
e2e_step 1 d$n --drivers $n
e2e_step 2 d$n --drivers $n --gpus 2
