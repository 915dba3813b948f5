#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz and .carry/e2e.tgz
# (bench/h200_pack_e2e.sh): where the router's and the workers' CPU goes at the local mode's highest load so far
# (Qwen3-30B-A3B full, 256 sequences, six driver threads, 3 routers over 2 workers on 2 GPUs): one run with V8 CPU
# profiles (SWITCHYARD_CPU_PROF_DIR), then each process's top functions by self time. Logs and profiles in $OUT.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=${PROF_FAMILY:-qwen3-moe}
conc=${PROF_CONC:-256}
mkdir -p $OUT/prof
export SWITCHYARD_CPU_PROF_DIR=$OUT/prof
# PROF_WORKERS / PROF_ARGS: another layout (e.g. PROF_WORKERS=1 PROF_ARGS=--drivers\ 6 for one router over one worker)
e2e_step ${PROF_WORKERS:-2} prof ${PROF_ARGS:---drivers 6 --routers 3 --gpus 2}
unset SWITCHYARD_CPU_PROF_DIR
for f in $OUT/prof/*.cpuprofile; do
  node bench/cpuprofile-top.mjs "$f" --top 40 > "${f%.cpuprofile}-top.txt"
  head -30 "${f%.cpuprofile}-top.txt"
  gzip "$f"
done
