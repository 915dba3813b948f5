#!/usr/bin/env bash
# Hardware counters (Nsight Compute, clocks left alone) of the two grouped GEMMs at two compute-side cells that miss
# the roofline goal (Mixtral T=1024, Qwen3 T=8192), library defaults with PDL off: where each GEMM's time goes
# (tensor pipe, L2 and DRAM throughput against peak, shared-memory pipes, warp stall reasons). A diagnostic for
# choosing the next kernel change, not a benchmark. Usage, from the repo root there: bash bench/h200_ncu.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
rm -rf $B
make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
say "ncu: $NCU"
prof() {  # label shape T
  mkdir -p /tmp/p
  # Calls 1-2 warm up (the first includes lazy setup); the GEMM1 and GEMM2 of call 3 are profiled.
  SY_MOE_PDL=0 PYTHONUNBUFFERED=1 timeout 110 $NCU --clock-control none \
    --kernel-name regex:wgmma_gemm_kernel --launch-skip 4 --launch-count 2 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section WarpStateStats --section LaunchStats --section Occupancy \
    python3 bench/h200_ncu_driver.py $B/libsy_moe.so "$2" "$3" 3 > $OUT/ncu-$1.log 2>&1
  say "$1 rc=$?"
  grep -E "wgmma_gemm_kernel|Throughput|Busy|Pipe|Duration|Hit Rate|Bandwidth|Issued|Eligible|Active Warps|Theoretical" \
    $OUT/ncu-$1.log | head -60
}
prof mixtral1024 mixtral-8x7b 1024
prof qwen8192 qwen3-30b-a3b 8192
