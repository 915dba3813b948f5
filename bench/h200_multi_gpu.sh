#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz and .carry/e2e.tgz
# (bench/h200_pack_e2e.sh): router + cuda workers end to end at the models' full sizes, one worker per GPU
# (--gpus 2), with one and with two flushes of a layer in flight (RoutingPolicy.batching.flushesInFlight), and one
# worker on one GPU as the baseline; all in one call, in turn. Logs in $OUT (e2e-<family>-full-c64[-w2]-<tag>.log).
#   MULTI_RUNS: families (default deepseek-v3 qwen3-moe); MULTI_CONC: sequences (default 64).
set -uo pipefail
OUT=${OUT:-/tmp/out}
export OUT NO_QUICK=1 E2E_SECONDS=${E2E_SECONDS:-15} E2E_FULL_TIMEOUT=${E2E_FULL_TIMEOUT:-400}
nvidia-smi --query-gpu=index,name --format=csv,noheader
conc=${MULTI_CONC:-64}
first=1
step() { # workers tag args...
  local workers=$1 tag=$2
  shift 2
  if [ $first = 1 ]; then unset E2E_NO_SETUP; first=0; else export E2E_NO_SETUP=1; fi
  E2E_WORKERS=$workers E2E_RUNS=$family:full:$conc E2E_TAG=$tag E2E_ARGS="--verify-threads 2 $*" bash bench/h200_e2e.sh
}
for family in ${MULTI_RUNS:-deepseek-v3 qwen3-moe}; do
  step 2 fif1 --gpus 2 --policy '{"batching":{"flushesInFlight":1}}'
  step 2 fif2 --gpus 2 --policy '{"batching":{"flushesInFlight":2}}'
  step 1 fif1 --policy '{"batching":{"flushesInFlight":1}}'
done
