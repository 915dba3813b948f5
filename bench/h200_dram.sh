#!/usr/bin/env bash
# DRAM and L2 bytes of the two grouped GEMMs (Nsight Compute metrics only, clocks left alone, PDL off) at one cell,
# with the library defaults and with each knob setting in VARIANTS: where a GEMM's DRAM traffic goes against what its
# operands need once (weights of the active experts once, each (token, expert) row once). A diagnostic, not a benchmark.
# Usage, from the repo root there: CELL=deepseek-v3:8192 VARIANTS="SY_MOE_GATHER=0;SY_MOE_RASTER_NB=64" bash bench/h200_dram.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
CELL=${CELL:-deepseek-v3:8192}
VARIANTS=${VARIANTS:-}
B=expert-worker/native/cuda/build
IFS=: read -r shape T <<< "$CELL"
rm -rf $B
make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
M=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum
M=$M,sm__cycles_elapsed.avg.per_second,lts__t_sectors_srcunit_ltcfabric.sum,lts__t_sectors_srcunit_tex.sum
M=$M,lts__t_sectors_srcunit_tex_lookup_miss.sum,lts__t_sectors_srcunit_tex_op_read.sum
IFS=';' read -ra vs <<< "default;$VARIANTS"
for i in "${!vs[@]}"; do
  v=${vs[$i]}
  [ "$v" = default ] && v=""
  [ -z "$v" ] && [ $i -gt 0 ] && continue
  env $v SY_MOE_PDL=0 timeout 120 $NCU --clock-control none --kernel-name regex:wgmma_gemm_kernel --launch-skip 4 \
    --launch-count 2 --metrics $M --csv python3 bench/h200_ncu_driver.py $B/libsy_moe.so "$shape" "$T" 3 \
    > $OUT/dram-$i.csv 2> $OUT/dram-$i.err
  echo "== ${v:-defaults} rc=$?"
  python3 - $OUT/dram-$i.csv <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    print(open(sys.argv[1]).read()[-800:]); sys.exit()
h = rows[0]; ik, im, iu, iv = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Unit"), h.index("Metric Value")
ii = h.index("ID")
by = {}
for r in rows[1:]:
    by.setdefault((r[ii], r[ik][:40]), []).append((r[im], r[iu], r[iv]))
for (i, k), ms in by.items():
    print(" ", k, " ".join(f"{m}={v}{u}" for m, u, v in ms))
PY
done
