#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz and .carry/e2e.tgz (bench/h200_pack_e2e.sh):
# where DeepSeek-V3's gate time per flush goes (3.6 ms a flush at 128 sequences, the largest part of a forward's time
# in the router, bench/results/h200-moe.md): the same run with the router's gate products on each thread count of
# GATE_THREADS_RUNS (SWITCHYARD_ROUTER_GATE_THREADS; default "4 1 2", 4 being the default cap) and then on the event
# loop (SWITCHYARD_ROUTER_GATE_ASYNC_MACS beyond any flush; GATE_SYNC=0 leaves that run out), in turn, E2E_SECONDS
# each, CONC sequences (default 128). At 256 and 512 sequences the gate threads bound the rate on the H200 host
# (~1.9 cores, bench/results/h200-moe.md "Session of 2026-11-30 06:06 UTC"): GATE_THREADS_RUNS="4 8 12 8 4"
# CONC=256 GATE_SYNC=0 times more of them. Logs in $OUT.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=deepseek-v3
conc=${CONC:-128}
i=0
for t in ${GATE_THREADS_RUNS:-4 1 2}; do
  i=$((i + 1))
  SWITCHYARD_ROUTER_GATE_THREADS=$t e2e_step 1 gate-threads-$i-$t --drivers 6 > /dev/null
done
[ "${GATE_SYNC:-1}" = 0 ] || SWITCHYARD_ROUTER_GATE_ASYNC_MACS=1000000000000 e2e_step 1 gate-sync --drivers 6 > /dev/null
rm -f $OUT/smoke.log $OUT/build.log
for f in $OUT/e2e-*.log; do
  echo "== $f"
  grep -E "^tokens/s|^latency|router time|worker batches|router by thread|^OK|FAILED" $f
done
