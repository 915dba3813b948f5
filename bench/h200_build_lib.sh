# Sourced by the H200 scripts that need only the shared library (bench/h200_anchor.sh, bench/h200_profile.sh): sets B
# (the build folder) and say (a line stamped with the script's seconds), then builds build/libsy_moe.so afresh unless
# NOBUILD=1 (a later call on a machine still warm from the build). Needs OUT.
B=expert-worker/native/cuda/build
say() { echo "[${SECONDS}s] $*"; }
if [ "${NOBUILD:-0}" != 1 ]; then
  rm -rf $B
  make -C expert-worker/native/cuda -j16 build/libsy_moe.so > $OUT/make.log 2>&1 || { tail -30 $OUT/make.log; exit 1; }
  say built
fi
