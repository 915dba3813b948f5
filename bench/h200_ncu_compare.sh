#!/usr/bin/env bash
# Nsight Compute (full set, clocks left alone, PDL off) of ours beside cuBLAS on the same GEMM: the balanced-expert
# anchor (bench/h200_ncu_ceiling.py E M K N, torch.bmm) and our two grouped GEMMs at one cell, with the defaults and
# each knob setting in VARIANTS. Prints the speed-of-light, pipe, shared-memory and stall lines of each kernel; the
# details pages go to $OUT. A diagnostic, not a benchmark. Usage, from the repo root there:
#   CELL=mixtral-8x7b:1024 BMM="8 256 4096 28672" VARIANTS="SY_MOE_CLUSTER=2" bash bench/h200_ncu_compare.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
CELL=${CELL:-mixtral-8x7b:1024}
BMM=${BMM:-8 256 4096 28672}
VARIANTS=${VARIANTS:-}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
IFS=: read -r shape T <<< "$CELL"
if [ "${NOBUILD:-0}" != 1 ]; then
  rm -rf $B
  make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
fi
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
show() {  # label: the lines worth comparing from the details page
  $NCU --import /tmp/rep-$1.ncu-rep --page details > $OUT/ncu-$1.log 2>&1
  grep -E "^  [a-zA-Z_]|SM Frequency|^    Duration|Throughput  |Pipe Util|Issue Slots Busy|Warp Cycles Per Issued|Shared Memory|Registers Per|Dynamic Shared|Bank Conflicts|Stall|Eligible|Active Warps" \
    $OUT/ncu-$1.log | grep -v "^    ---" | head -60
}
$NCU --clock-control none --kernel-name regex:nvjet --launch-skip 2 --launch-count 1 --set full -f -o /tmp/rep-cublas \
  timeout 120 python3 bench/h200_ncu_ceiling.py $BMM > $OUT/ncu-run-cublas.log 2>&1
say "cublas rc=$?"
show cublas
IFS=';' read -ra vs <<< "default;$VARIANTS"
for i in "${!vs[@]}"; do
  v=${vs[$i]}
  [ "$v" = default ] && v=""
  [ -z "$v" ] && [ $i -gt 0 ] && continue
  env $v SY_MOE_PDL=0 PYTHONUNBUFFERED=1 timeout 150 $NCU --clock-control none --kernel-name regex:wgmma_gemm_kernel \
    --launch-skip 4 --launch-count 2 --set full --import-source no -f -o /tmp/rep-ours$i \
    python3 bench/h200_ncu_driver.py $B/libsy_moe.so "$shape" "$T" 3 > $OUT/ncu-run-ours$i.log 2>&1
  say "ours '${v:-defaults}' rc=$?"
  show ours$i
done
