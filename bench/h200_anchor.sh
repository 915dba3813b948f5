#!/usr/bin/env bash
# Balanced-expert anchors (bench/h200_anchor.py): cuBLAS bmm and torch._grouped_mm on the compute-side cells' GEMMs
# beside ours and the GEMM ceiling, in the same rounds. Usage, from the repo root there:
#   [CELLS=mixtral-8x7b:1024,...] [ROUNDS=3] [KNOBS="SY_MOE_CLUSTER=2"] [SKEW=1] bash bench/h200_anchor.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
source bench/h200_build_lib.sh
PYTHONUNBUFFERED=1 OUT=$OUT timeout ${LIMIT:-420} python3 bench/h200_anchor.py $B/libsy_moe.so \
  --cells "${CELLS:-mixtral-8x7b:1024,qwen3-30b-a3b:8192,deepseek-v3:8192,mixtral-8x7b:8192}" --rounds "${ROUNDS:-3}" \
  ${KNOBS:+--knobs "$KNOBS"} ${SKEW:+--skew} > $OUT/anchor.log 2>&1
say "anchor rc=$?"
tail -25 $OUT/anchor.log
