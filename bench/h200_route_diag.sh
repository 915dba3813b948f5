#!/usr/bin/env bash
# The routing kernels at T=8192 (Qwen3, DeepSeek-V3): Nsight Compute (issue rate, occupancy, memory) of
# route_reg_kernel and of route_kernel (SY_MOE_ROUTE_REG=0), then per-kernel times with 1 and 2 tokens per warp
# (SY_MOE_ROUTE_TPW; kRouteRegMaxTpw caps it, 4 when bench/results/logs/h200-route-profile.log was made). A
# diagnostic, not a benchmark. Usage, from the repo root there: bash bench/h200_route_diag.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
B=expert-worker/native/cuda/build
rm -rf $B; make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -20 $OUT/make.log; exit 1; }
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for v in 1 0; do for sh in deepseek-v3 qwen3-30b-a3b; do
  env SY_MOE_ROUTE_REG=$v SY_MOE_PDL=0 timeout 100 $NCU --clock-control none --kernel-name regex:route --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    python3 bench/h200_ncu_driver.py $B/libsy_moe.so $sh 8192 3 > $OUT/ncu-route-$v-$sh.log 2>&1
  echo "== reg=$v $sh rc=$?"
  grep -E "route|Duration|SM Frequency|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issued Warp|No Eligible|Stall|Block Limit|Waves|Dynamic Shared|L1/TEX Hit|Mem Busy|Max Bandwidth" $OUT/ncu-route-$v-$sh.log | head -40
done; done
NOBUILD=1 RUNS="t1|SY_MOE_ROUTE_TPW=1|qwen3-30b-a3b,deepseek-v3|8192;t2|SY_MOE_ROUTE_TPW=2|qwen3-30b-a3b,deepseek-v3|8192;t0|SY_MOE_NOP=0|qwen3-30b-a3b,deepseek-v3|8192" bash bench/h200_profile.sh 2>&1 | grep -E "rc=|route|ms "
