#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz, .carry/e2e.tgz (bench/h200_pack_e2e.sh)
# and .carry/test.tgz (bench/h200_pack_test.sh): a session's closing check of the worker on the GPU. The end
# to end (router + one cuda worker on the Mixtral-shaped tiny checkpoint, every answer against the reference), the
# CUDA backend's vitest, then Qwen3-30B-A3B full at 256 sequences over one router and one worker with V8 CPU profiles
# of the router and the worker (their top functions by self time). Keeps at most 8 files in $OUT (the device returns
# no more): the logs and the profiles' tops.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
tiny_check_and_vitest
family=qwen3-moe
conc=256
mkdir -p /tmp/prof
export SWITCHYARD_CPU_PROF_DIR=/tmp/prof
e2e_step 1 prof --drivers 6
unset SWITCHYARD_CPU_PROF_DIR
for f in /tmp/prof/*.cpuprofile; do
  case $(basename $f) in router*|w0*) node bench/cpuprofile-top.mjs "$f" --top 40 > "$OUT/prof-$(basename ${f%.cpuprofile})-top.txt" ;; esac
done
head -24 $OUT/prof-*-top.txt
rm -f $OUT/smoke.log
