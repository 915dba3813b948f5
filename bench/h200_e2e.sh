#!/usr/bin/env bash
# On the H200 machine, from the repo root, after bench/h200_pack_e2e.sh prepared .carry/node.xz and .carry/e2e.tgz:
# builds the addons from this checkout copy with nvcc (CPU addon + switchyard_cuda + sy_moe_test via CMake),
# runs the CUDA backend smoke/parity check, then router + one cuda worker through gRPC on generated Mixtral-shaped
# checkpoints (local mode verifies every answer against the reference). Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
xz -dc .carry/node.xz > .carry/node && chmod +x .carry/node && export PATH=$PWD/.carry:$PATH
tar xzf .carry/e2e.tgz
echo "node $(node --version), nvcc: $(nvcc --version | tail -1)"
export CUDACXX=$(command -v nvcc)
(time node expert-worker/scripts/build-native.mjs) > $OUT/build.log 2>&1; tail -6 $OUT/build.log
ls -la expert-worker/build/*.node expert-worker/build/sy_moe_test
# NO_QUICK=1 skips the library's quick test (over 90 s there; bench/h200_final.sh runs the full one)
[ -n "${NO_QUICK:-}" ] || expert-worker/build/sy_moe_test --quick | tail -2
node bench/h200_worker_smoke.mjs 2>&1 | tee $OUT/smoke.log
for size in ${E2E_SIZES:-tiny medium}; do
  SWITCHYARD_BACKEND=cuda timeout 150 node router-service/dist/local/main.js --family mixtral --size $size --workers 1 \
    --duration ${E2E_SECONDS:-15} > $OUT/e2e-$size.log 2>&1
  echo "e2e $size rc=$?"; grep -E "backend:|tokens/s|answers verified|cache hit|OK:|FAILED" $OUT/e2e-$size.log | head -8
done
