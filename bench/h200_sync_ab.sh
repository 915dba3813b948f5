#!/usr/bin/env bash
# On the H200 machine (carry .carry/node.xz and .carry/e2e.tgz from bench/h200_pack_e2e.sh): how the CUDA worker
# waits for the GPU, asleep (SWITCHYARD_CUDA_SYNC=blocking: cudaEventBlockingSync) or spinning (the default), timed in
# turn in one call: the local mode with one cuda worker, 8 s per run, tokens/s, the worker's batches and each
# process's CPU. Logs: $OUT/sync-<family>-<size>-<mode>-<n>.log. The answers are checked on a sample: checking all of
# them at the tiny size takes ~30 s after each run (the first call, 20:13 UTC, ran out of time that way after three).
set -uo pipefail
OUT=${OUT:-/tmp/out}
# SYNC_NO_SETUP=1: the addons are built already (bench/h200_e2e.sh ran earlier in the same call)
if [ -z "${SYNC_NO_SETUP:-}" ]; then
  OUT=$OUT E2E_RUNS=" " NO_QUICK=1 bash bench/h200_e2e.sh > $OUT/setup.log 2>&1
  grep -E "^real|OK:|FAIL" $OUT/setup.log | head -5
fi
export PATH=$PWD/.carry:$PATH
run() {
  SWITCHYARD_CUDA_SYNC=$3 SWITCHYARD_BACKEND=cuda timeout 90 node router-service/dist/local/main.js --family $1 \
    --size $2 --workers 1 --duration ${SYNC_SECONDS:-8} --verify sample > $OUT/sync-$1-$2-$3-$4.log 2>&1
  echo "$1 $2 sync=$3 #$4 rc=$?"
  grep -E "^tokens/s|worker batches|CPU during|^OK|FAILED" $OUT/sync-$1-$2-$3-$4.log
}
# SYNC_RUNS: "family:size" entries, each timed blocking, spinning, blocking, spinning
for entry in ${SYNC_RUNS:-mixtral:tiny qwen3-moe:full}; do
  IFS=: read -r family size <<< "$entry"
  run $family $size blocking 1; run $family $size spin 1; run $family $size blocking 2; run $family $size spin 2
done
