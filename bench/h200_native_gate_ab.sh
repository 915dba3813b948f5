#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz, .carry/e2e.tgz (bench/h200_pack_e2e.sh)
# and .carry/test.tgz (bench/h200_pack_test.sh): first the end-to-end check (router + one cuda worker on the
# Mixtral-shaped tiny checkpoint, every answer against the reference) and the CUDA backend's vitest; then the router's
# native gate selection (the default) against the TypeScript one (SWITCHYARD_ROUTER_NATIVE_GATE=0), timed in turn,
# native / TypeScript / native / TypeScript, at Qwen3-30B-A3B's full size with 256 sequences and six driver threads
# over one router and one worker (the run where one router's event loop is the bound, bench/results/h200-moe.md);
# then DeepSeek-V3 full (its sigmoid group gate) the same two ways. Logs in $OUT.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
tiny_check_and_vitest
export E2E_SECONDS=${E2E_SECONDS:-12}
family=qwen3-moe
conc=256
for tag in gate-native-1 gate-ts-1 gate-native-2 gate-ts-2; do
  if [[ $tag == gate-ts-* ]]; then export SWITCHYARD_ROUTER_NATIVE_GATE=0; else unset SWITCHYARD_ROUTER_NATIVE_GATE; fi
  e2e_step 1 $tag --drivers 6
done
family=deepseek-v3
conc=128
for tag in gate-native gate-ts; do
  if [[ $tag == gate-ts ]]; then export SWITCHYARD_ROUTER_NATIVE_GATE=0; else unset SWITCHYARD_ROUTER_NATIVE_GATE; fi
  e2e_step 1 $tag --drivers 6
done
