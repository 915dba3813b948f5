#!/usr/bin/env bash
# Here (no GPU), from the repo root: puts the unfixed cuda sources for bench/h200_persist.sh into .carry/oldcuda
# (ignored; carry it): sy_moe.* and the wgmma headers of commit ${1:-4493e35} (before the persistent-stall fix) with
# the 192-token-tile cap of the 128-row persistent kernel lifted, so forcing it reaches the sizes that stalled, and
# the current test_moe.cu (its --stress cases).
set -euo pipefail
REV=${1:-4493e35}
D=.carry/oldcuda
rm -rf $D && mkdir -p $D
for f in sy_moe.cu sy_moe.h sy_moe_wgmma.cuh wgmma_gen.cuh Makefile; do
  git show $REV:expert-worker/native/cuda/$f > $D/$f
done
cp expert-worker/native/cuda/test_moe.cu $D/
sed -i 's/constexpr int kPersist128MaxTokenTiles = 192;/constexpr int kPersist128MaxTokenTiles = 1 << 30;/' $D/sy_moe.cu
grep -q "kPersist128MaxTokenTiles = 1 << 30" $D/sy_moe.cu
echo "$D: $(ls $D | tr '\n' ' ')"
