#!/usr/bin/env bash
# Hardware counters (Nsight Compute, clocks left alone) of the two grouped GEMMs at the compute-side cells that miss
# the roofline goal, library defaults with PDL off: where each GEMM's time goes (tensor pipe, L2 and DRAM throughput
# against peak, shared-memory pipes, warp stall reasons), and the SASS lines with the most warp stall samples (what
# the warps wait on: a stage's full barrier, the wgmma pipeline, the epilogue). A diagnostic for choosing the next
# kernel change, not a benchmark. Usage, from the repo root there: bash bench/h200_ncu.sh
#   CELLS="label:shape:T ..." (default the three cells below); ENV="KNOB=V ..." for the library (e.g. a variant)
set -uo pipefail
OUT=${OUT:-/tmp/out}
CELLS=${CELLS:-"mixtral1024:mixtral-8x7b:1024 qwen8192:qwen3-30b-a3b:8192 dsv38192:deepseek-v3:8192"}
ENV=${ENV:-}
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
rm -rf $B
make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
say built
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
say "ncu: $NCU"
prof() {  # label shape T
  # Calls 1-2 warm up (the first includes lazy setup); the GEMM1 and GEMM2 of call 3 are profiled.
  env $ENV SY_MOE_PDL=0 PYTHONUNBUFFERED=1 timeout 150 $NCU --clock-control none \
    --kernel-name regex:wgmma_gemm_kernel --launch-skip 4 --launch-count 2 --set full --import-source no \
    -f -o /tmp/rep-$1 python3 bench/h200_ncu_driver.py $B/libsy_moe.so "$2" "$3" 3 > $OUT/ncu-run-$1.log 2>&1
  say "$1 rc=$?"
  $NCU --import /tmp/rep-$1.ncu-rep --page details > $OUT/ncu-$1.log 2>&1
  grep -E "wgmma_gemm_kernel|SM Frequency|Duration|Throughput|Hit Rate|Pipe Util|Issued Ipc|Warp Cycles Per Issued" \
    $OUT/ncu-$1.log | head -40
  # per-SASS-line stall samples of each profiled kernel (source page, CSV): the 12 lines with the most samples
  $NCU --import /tmp/rep-$1.ncu-rep --page source --print-source sass --csv > $OUT/src-$1.csv 2> $OUT/src-$1.err
  python3 - $OUT/src-$1.csv <<'PY'
import csv, sys
def num(x):
    try:
        return float(x.replace(",", ""))
    except Exception:
        return 0.0
kernels, hdr = [], None  # a row naming a "Source" column starts a kernel's table
for rec in csv.reader(open(sys.argv[1], errors="replace")):
    if "Source" in rec and any("Sampling" in c for c in rec):
        hdr = rec
        kernels.append((hdr, []))
    elif hdr is not None and len(rec) == len(hdr):
        kernels[-1][1].append(rec)
if not kernels:
    print("no source table; first lines:", open(sys.argv[1], errors="replace").read(600))
for ki, (h, lines) in enumerate(kernels):
    ia = next((i for i, c in enumerate(h) if c.startswith("Warp Stall Sampling (All")), None)
    inot = next((i for i, c in enumerate(h) if c.startswith("Warp Stall Sampling (Not")), None)
    isrc = h.index("Source")
    if ia is None:
        print("columns:", h[:16])
        continue
    tot = sum(num(r[ia]) for r in lines) or 1
    print(f"kernel {ki}: {int(tot)} stall samples over {len(lines)} lines; top (all samples %, not-issued %):")
    for r in sorted(lines, key=lambda r: -num(r[ia]))[:14]:
        ni = f"{100 * num(r[inot]) / tot:5.1f}%" if inot is not None else ""
        print(f"  {100 * num(r[ia]) / tot:5.1f}% {ni}  {r[isrc][:100]}")
PY
}
for c in $CELLS; do
  IFS=: read -r label shape T <<< "$c"
  prof "$label" "$shape" "$T"
done
