#!/usr/bin/env bash
# One H200 call for the 2-CTA cluster variant of the persistent GEMMs (activation tile shared by TMA multicast;
# knob SY_MOE_CLUSTER=1). The variant measured slower and is not in the sources: this script applies it from
# bench/results/logs/h200-cluster-multicast.patch first. Then: build, its correctness cases and stress (a stall
# prints STALL and exits), four compute-side cells timed with the knob on and off in the same run (variant_ms),
# memcheck of one cluster case. Each step is cut at a time limit so the call stays inside LIMIT seconds.
# Usage, from the repo root there: bash bench/h200_cluster.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
LIMIT=${LIMIT:-230}
B=expert-worker/native/cuda/build
grep -q SY_MOE_CLUSTER expert-worker/native/cuda/sy_moe.cu ||
  patch -p1 < bench/results/logs/h200-cluster-multicast.patch > /dev/null || { echo "patch failed"; exit 1; }
say() { echo "[${SECONDS}s] $*"; }
left() { local t=$((LIMIT - SECONDS - $1)); [ $t -lt 5 ] && t=5; echo $t; }
rm -rf $B
make -C expert-worker/native/cuda -j16 > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
timeout 45 $B/test_moe --quick --case cluster --stall-s 10 > $OUT/cluster-test.log 2>&1
say "cases rc=$? $(tail -1 $OUT/cluster-test.log)"
grep -E "FAIL|STALL" $OUT/cluster-test.log | head
timeout 40 $B/test_moe --stress --case cluster --stall-s 10 > $OUT/cluster-stress.log 2>&1
say "stress rc=$? $(tail -1 $OUT/cluster-stress.log)"
grep -E "FAIL|STALL" $OUT/cluster-stress.log | head
if grep -qE "^[0-9]+ passed, 0 failed" $OUT/cluster-test.log && grep -qE "^[0-9]+ passed, 0 failed" $OUT/cluster-stress.log; then
  mkdir -p /tmp/cb
  PYTHONUNBUFFERED=1 OUT=/tmp/cb timeout $(left 40) python3 bench/h200_moe.py $B/libsy_moe.so \
    --shapes mixtral-8x7b,qwen3-30b-a3b --ts 1024,8192 --no-tune --no-loop \
    --variants "SY_MOE_CLUSTER=1;SY_MOE_CLUSTER=0" > $OUT/cluster-bench.log 2>&1
  say "bench rc=$?"
  cp /tmp/cb/h200-moe.json $OUT/cluster-bench.json 2>/dev/null
  python3 - $OUT/cluster-bench.log <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{") and '"variant_ms"' in line:
        r = json.loads(line)
        print(r["shape"], r["T"], "default %.4f" % r["ms"], "floor %.4f" % r["floor_ms"], r["variant_ms"])
PY
  timeout $(left 5) compute-sanitizer --tool memcheck $B/test_moe --quick --case cluster-awkward > $OUT/cluster-memcheck.log 2>&1
  say "memcheck rc=$? $(grep -E 'ERROR SUMMARY|passed' $OUT/cluster-memcheck.log | tr '\n' ' ')"
fi
exit 0
