#!/usr/bin/env bash
# On the H200 machine, from the repo root, after bench/h200_pack_e2e.sh prepared .carry/node.xz and .carry/e2e.tgz:
# builds the addons from this checkout copy with nvcc (CPU addon + switchyard_cuda + sy_moe_test via CMake),
# runs the CUDA backend smoke/parity check, then router + one cuda worker through gRPC on generated Mixtral-shaped
# checkpoints (local mode verifies every answer against the reference). Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
export PATH=$PWD/.carry:$PATH
# E2E_NO_SETUP=1: node, the dist and the addons are in place already (an earlier run of this script in the same call)
if [ -z "${E2E_NO_SETUP:-}" ]; then
xz -dc .carry/node.xz > .carry/node && chmod +x .carry/node
tar xzf .carry/e2e.tgz
echo "node $(node --version), nvcc: $(nvcc --version | tail -1)"
export CUDACXX=$(command -v nvcc)
(time node expert-worker/scripts/build-native.mjs) > $OUT/build.log 2>&1; tail -6 $OUT/build.log
# the router's combine addon (a deployment has it; without it the router combines in TypeScript)
node scripts/build-native.mjs router-service >> $OUT/build.log 2>&1 || echo "router addon build failed (see build.log)"
ls -la expert-worker/build/*.node expert-worker/build/sy_moe_test router-service/build/*.node
# NO_QUICK=1 skips the library's quick test (over 90 s there; bench/h200_final.sh runs the full one)
[ -n "${NO_QUICK:-}" ] || expert-worker/build/sy_moe_test --quick | tail -2
node bench/h200_worker_smoke.mjs 2>&1 | tee $OUT/smoke.log
fi
# E2E_RUNS: "family:size[:concurrency]" entries (default: Mixtral tiny and medium). --size full is the family's real
# dimensions (Mixtral-8x7B: d=4096, f=14336, 5.6 GB for 2 layers), checked on a sample of the answers by 8 reference
# threads. Logs: e2e-<size>.log for Mixtral, e2e-<family>-<size>[-c<concurrency>].log for the rest.
for run in ${E2E_RUNS:-mixtral:tiny mixtral:medium}; do
  IFS=: read -r family size conc <<< "$run"
  log=e2e-$size.log; [ "$family" = mixtral ] || log=e2e-$family-$size.log
  [ -n "$conc" ] && log=${log%.log}-c$conc.log
  # E2E_WORKERS: cuda workers (default 1; with E2E_ARGS="--gpus N" they spread over N GPUs)
  workers=${E2E_WORKERS:-1}
  [ "$workers" != 1 ] && log=${log%.log}-w$workers.log
  # E2E_TAG tells apart runs of one model with other E2E_ARGS in the same call
  [ -n "${E2E_TAG:-}" ] && log=${log%.log}-$E2E_TAG.log
  limit=150; [ "$size" = full ] && limit=${E2E_FULL_TIMEOUT:-300}
  SWITCHYARD_BACKEND=cuda timeout $limit node router-service/dist/local/main.js --family $family --size $size --workers $workers \
    --duration ${E2E_SECONDS:-15} ${conc:+--concurrency $conc} ${E2E_ARGS:-} > $OUT/$log 2>&1
  echo "e2e $family $size ${conc:+concurrency $conc }workers $workers rc=$?"
  grep -E "backend:|combine:|shared expert|generating|reference weights|tokens/s|latency|tokens per|in the router|worker batches|CPU during|cache hit|answers verified|OK:|FAILED" $OUT/$log | head -20
done
