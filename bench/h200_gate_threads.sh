#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz and .carry/e2e.tgz (bench/h200_pack_e2e.sh):
# where DeepSeek-V3's gate time per flush goes (3.6 ms a flush at 128 sequences, the largest part of a forward's time
# in the router, bench/results/h200-moe.md): the same run with the router's gate products on 1, 2 and 4 threads
# (SWITCHYARD_ROUTER_GATE_THREADS; 4 is the default here) and on the event loop (SWITCHYARD_ROUTER_GATE_ASYNC_MACS
# beyond any flush), in turn, 15 s each. Logs in $OUT.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=deepseek-v3
conc=128
for t in 4 1 2; do
  SWITCHYARD_ROUTER_GATE_THREADS=$t e2e_step 1 gate-threads-$t --drivers 6 > /dev/null
done
SWITCHYARD_ROUTER_GATE_ASYNC_MACS=1000000000000 e2e_step 1 gate-sync --drivers 6 > /dev/null
rm -f $OUT/smoke.log $OUT/build.log
for f in $OUT/e2e-*.log; do
  echo "== $f"
  grep -E "^tokens/s|^latency|router time|worker batches|router by thread|^OK|FAILED" $f
done
