#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz and .carry/e2e.tgz
# (bench/h200_pack_e2e.sh): end to end with the load from one driver thread and from several (the local mode's
# --drivers), one cuda worker, then two workers on two GPUs (--gpus 2); all in one call, in turn. Logs in $OUT.
#   DRIVERS_FAMILY (default qwen3-moe), DRIVERS_CONC (default 128), DRIVERS_N (default 3).
set -uo pipefail
OUT=${OUT:-/tmp/out}
export OUT NO_QUICK=1 E2E_SECONDS=${E2E_SECONDS:-15} E2E_FULL_TIMEOUT=${E2E_FULL_TIMEOUT:-400}
nvidia-smi --query-gpu=index,name --format=csv,noheader
family=${DRIVERS_FAMILY:-qwen3-moe}
conc=${DRIVERS_CONC:-128}
n=${DRIVERS_N:-3}
first=1
step() { # workers tag args...
  local workers=$1 tag=$2
  shift 2
  if [ $first = 1 ]; then unset E2E_NO_SETUP; first=0; else export E2E_NO_SETUP=1; fi
  E2E_WORKERS=$workers E2E_RUNS=$family:full:$conc E2E_TAG=$tag E2E_ARGS="--verify-threads 2 $*" bash bench/h200_e2e.sh
}
step 1 d1 --drivers 1
step 1 d$n --drivers $n
step 2 d$n --drivers $n --gpus 2
