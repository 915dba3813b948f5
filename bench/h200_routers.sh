#!/usr/bin/env bash
# Prepared for the next device time (not run yet). On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo
# root, with .carry/node.xz and .carry/e2e.tgz (bench/h200_pack_e2e.sh): one router against two router replicas
# (the local mode's --routers) with the load from three driver threads, one cuda worker, then two routers over two
# workers on two GPUs; all in one call, in turn. Logs in $OUT.
#   ROUTERS_FAMILY (default qwen3-moe), ROUTERS_CONC (default 128).
set -uo pipefail
OUT=${OUT:-/tmp/out}
export OUT NO_QUICK=1 E2E_SECONDS=${E2E_SECONDS:-15} E2E_FULL_TIMEOUT=${E2E_FULL_TIMEOUT:-400}
nvidia-smi --query-gpu=index,name --format=csv,noheader
family=${ROUTERS_FAMILY:-qwen3-moe}
conc=${ROUTERS_CONC:-128}
first=1
step() { # workers tag args...
  local workers=$1 tag=$2
  shift 2
  if [ $first = 1 ]; then unset E2E_NO_SETUP; first=0; else export E2E_NO_SETUP=1; fi
  E2E_WORKERS=$workers E2E_RUNS=$family:full:$conc E2E_TAG=$tag E2E_ARGS="--verify-threads 2 --drivers 3 $*" \
    bash bench/h200_e2e.sh
}
step 1 r1
step 1 r2 --routers 2
step 2 r2 --routers 2 --gpus 2
