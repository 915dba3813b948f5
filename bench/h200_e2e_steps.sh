# Sourced by the H200 end-to-end scripts (h200_multi_gpu.sh, h200_routers.sh, h200_final_check.sh, ...): the shared
# environment, and `e2e_step WORKERS TAG ARGS...`, one run of $family at full size with $conc sequences through
# bench/h200_e2e.sh (the first run builds the addons, the later ones reuse them). Logs in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
export OUT NO_QUICK=1 E2E_SECONDS=${E2E_SECONDS:-15} E2E_FULL_TIMEOUT=${E2E_FULL_TIMEOUT:-400}
nvidia-smi --query-gpu=index,name --format=csv,noheader
e2e_first=1
e2e_step() {
  local workers=$1 tag=$2
  shift 2
  if [ $e2e_first = 1 ]; then unset E2E_NO_SETUP; e2e_first=0; else export E2E_NO_SETUP=1; fi
  E2E_WORKERS=$workers E2E_RUNS=$family:full:$conc E2E_TAG=$tag E2E_ARGS="--verify-threads 2 $*" bash bench/h200_e2e.sh
}
# The end-to-end check (router + one cuda worker on the Mixtral-shaped tiny checkpoint, every answer against
# the reference; the call's first run, so it builds the addons) and the CUDA backend's vitest, after the caller put
# .carry on PATH. Logs: e2e-tiny-final.log and vitest.log in $OUT.
tiny_check_and_vitest() {
  E2E_RUNS=mixtral:tiny E2E_TAG=final bash bench/h200_e2e.sh
  e2e_first=0
  cuda_vitest
}
# The CUDA backend's vitest (after the addons are built), from .carry/test.tgz: log $OUT/vitest.log, summary printed.
cuda_vitest() {
  tar xzf .carry/test.tgz
  node node_modules/vitest/vitest.mjs run expert-worker/src/backend expert-worker/src/gpu-tier.test.ts \
    expert-worker/src/core-merge.test.ts \
    > $OUT/vitest.log 2>&1
  echo "vitest rc=$?"
  grep -E "Test Files|Tests |FAIL|✗|×" $OUT/vitest.log | head
}
# `e2e_pack NAME GLOB`: prints each run's summary lines, then moves the runs' logs (GLOB under $OUT) into one tarball,
# $OUT/NAME-logs.tgz (the device returns at most 8 files), with whatever $OUT/NAME/ holds already.
e2e_pack() {
  local name=$1 glob=$2 f
  rm -f $OUT/smoke.log $OUT/build.log
  for f in $OUT/$glob; do
    echo "== $f"
    grep -E "^tokens/s|^latency|router time|worker batches|CPU during|router by thread|smoke: |^OK|FAILED" $f
  done
  mkdir -p $OUT/$name && mv $OUT/$glob $OUT/$name/
  tar czf $OUT/$name-logs.tgz -C $OUT $name && rm -rf $OUT/$name
  ls $OUT
}
