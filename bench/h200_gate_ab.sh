#!/usr/bin/env bash
# Qwen3-30B-A3B full, 64 sequences: the router's gate off the event loop (default) against synchronous
# (SWITCHYARD_ROUTER_GATE_ASYNC_MACS beyond any flush), in the order async, sync, sync, async, in one call.
# After bench/h200_pack_e2e.sh; logs under $OUT.
set -u
OFF=1000000000000
NO_QUICK=1 E2E_SECONDS=15 E2E_TAG=async-1 E2E_RUNS="qwen3-moe:full:64" E2E_FULL_TIMEOUT=120 bash bench/h200_e2e.sh > $OUT/setup.log 2>&1
SWITCHYARD_ROUTER_GATE_ASYNC_MACS=$OFF E2E_NO_SETUP=1 E2E_SECONDS=15 E2E_TAG=sync-1 E2E_RUNS="qwen3-moe:full:64" E2E_FULL_TIMEOUT=90 bash bench/h200_e2e.sh >> $OUT/setup.log 2>&1
SWITCHYARD_ROUTER_GATE_ASYNC_MACS=$OFF E2E_NO_SETUP=1 E2E_SECONDS=15 E2E_TAG=sync-2 E2E_RUNS="qwen3-moe:full:64" E2E_FULL_TIMEOUT=90 bash bench/h200_e2e.sh >> $OUT/setup.log 2>&1
E2E_NO_SETUP=1 E2E_SECONDS=15 E2E_TAG=async-2 E2E_RUNS="qwen3-moe:full:64" E2E_FULL_TIMEOUT=90 bash bench/h200_e2e.sh >> $OUT/setup.log 2>&1
for f in $OUT/e2e-*.log; do echo "== $f: $(grep -h '^tokens/s' $f) | $(grep -h 'in the router' $f) | $(grep -h 'router by thread' $f) | $(grep -h '^OK\|FAILED' $f)"; done
