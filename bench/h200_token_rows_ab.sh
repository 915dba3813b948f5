#!/usr/bin/env bash
# On the H200 machine, from the repo root, with .carry/node.xz, .carry/e2e.tgz (bench/h200_pack_e2e.sh) and
# .carry/test.tgz (bench/h200_pack_test.sh): deduplicated batches gathered and summed on the GPU (the default)
# against the same on the host (SWITCHYARD_CUDA_TOKEN_ROWS=host), timed in turn in one call, end to end with router
# + one cuda worker at the models' full sizes. Between the first pair it runs the CUDA backend's vitest (the GPU test
# checks the device sums bit for bit against the host's). Logs in $OUT.
#   AB_RUNS: "family:size:concurrency" entries (default DeepSeek-V3 then Qwen3-30B-A3B, 64 sequences).
set -uo pipefail
OUT=${OUT:-/tmp/out}
export PATH=$PWD/.carry:$PATH
export OUT NO_QUICK=1 E2E_SECONDS=${E2E_SECONDS:-15} E2E_FULL_TIMEOUT=${E2E_FULL_TIMEOUT:-200}
export E2E_ARGS=${E2E_ARGS:---verify-threads 2}
# cuda_vitest (bench/h200_e2e_steps.sh prints the GPU list and exports the same OUT / E2E_* defaults it keeps)
source bench/h200_e2e_steps.sh
first=1
for run in ${AB_RUNS:-deepseek-v3:full:64 qwen3-moe:full:64}; do
  for where in device host; do
    if [ $first = 1 ]; then unset E2E_NO_SETUP; else export E2E_NO_SETUP=1; fi
    SWITCHYARD_CUDA_TOKEN_ROWS=$where E2E_RUNS=$run E2E_TAG=rows-$where bash bench/h200_e2e.sh
    if [ $first = 1 ]; then
      first=0
      cuda_vitest
    fi
  done
done
