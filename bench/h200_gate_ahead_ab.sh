#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz and .carry/e2e.tgz (bench/h200_pack_e2e.sh):
# the router's gate started while requests wait for their flush (SWITCHYARD_ROUTER_GATE_AHEAD=on, the default;
# router-service/src/flush-gate.ts FlushGate.startAhead) against the gate at the flush (off), timed in turn: first the end-to-end check
# (router + one cuda worker on the tiny Mixtral-shaped checkpoint, every answer against the reference; SKIP_TINY=1
# leaves it out), then DeepSeek-V3 full (FAMILY), 128 sequences (CONC), one router, one worker, six driver threads, in
# the order on / off / off / on (GATE_AHEAD_RUNS to change it), E2E_SECONDS each. Logs: one tarball
# $OUT/gate-ahead-logs.tgz and the summary.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
export E2E_SECONDS=${E2E_SECONDS:-12}
if [ "${SKIP_TINY:-0}" != 1 ]; then
  E2E_RUNS=mixtral:tiny E2E_TAG=final bash bench/h200_e2e.sh
  e2e_first=0
fi
family=${FAMILY:-deepseek-v3}
conc=${CONC:-128}
i=0
for mode in ${GATE_AHEAD_RUNS:-on off off on}; do
  i=$((i + 1))
  SWITCHYARD_ROUTER_GATE_AHEAD=$mode e2e_step 1 ahead-$i-$mode --drivers 6 > /dev/null
done
e2e_pack gate-ahead "e2e-*ahead*.log"
