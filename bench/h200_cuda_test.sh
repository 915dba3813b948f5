#!/usr/bin/env bash
# On the H200 machine, from the repo root, after bench/h200_pack_test.sh prepared .carry/node.xz and .carry/test.tgz:
# builds the addons from this checkout copy with nvcc (CPU addon + switchyard_cuda via CMake), then runs the CUDA
# backend's vitest tests (the GPU parity test runs there; CI skips it) and the worker's GPU-tier tests. Logs in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
xz -dc .carry/node.xz > .carry/node && chmod +x .carry/node && export PATH=$PWD/.carry:$PATH
tar xzf .carry/test.tgz
echo "node $(node --version), nvcc: $(nvcc --version | tail -1)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export CUDACXX=$(command -v nvcc)
(time node expert-worker/scripts/build-native.mjs) > $OUT/build.log 2>&1
rc=$?
tail -6 $OUT/build.log
[ $rc -ne 0 ] && exit $rc
ls -la expert-worker/build/*.node
node node_modules/vitest/vitest.mjs run expert-worker/src/backend expert-worker/src/gpu-tier.test.ts 2>&1 | tee $OUT/vitest.log
exit "${PIPESTATUS[0]}"
