#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz and .carry/e2e.tgz
# (bench/h200_pack_e2e.sh): router + cuda workers end to end at the models' full sizes, one worker per GPU
# (--gpus 2), with one and with two flushes of a layer in flight (RoutingPolicy.batching.flushesInFlight), and one
# worker on one GPU as the baseline; all in one call, in turn. Logs in $OUT (e2e-<family>-full-c64[-w2]-<tag>.log).
#   MULTI_RUNS: families (default deepseek-v3 qwen3-moe); MULTI_CONC: sequences (default 64).
source bench/h200_e2e_steps.sh
conc=${MULTI_CONC:-64}
for family in ${MULTI_RUNS:-deepseek-v3 qwen3-moe}; do
  e2e_step 2 fif1 --gpus 2 --policy '{"batching":{"flushesInFlight":1}}'
  e2e_step 2 fif2 --gpus 2 --policy '{"batching":{"flushesInFlight":2}}'
  e2e_step 1 fif1 --policy '{"batching":{"flushesInFlight":1}}'
done
