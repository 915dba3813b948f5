#!/usr/bin/env bash
# On the 2-GPU H200 machine (kind nvidia-h200-x2), from the repo root, with .carry/node.xz, .carry/e2e.tgz
# (bench/h200_pack_e2e.sh, this checkout) and .carry/worker-old.tgz (expert-worker/dist and packages/protocol/dist
# compiled from the commit before the worker's JavaScript changes, 3f4fc0c): the worker's event-loop changes (cache
# and expert-token counts taken at the scrape; the data path writing a result's output without copying it) against
# the code before them, the compiled worker swapped between runs, new / old / new, at Qwen3-30B-A3B full, 256
# sequences, six driver threads, 3 routers over 2 workers on 2 GPUs. Then DeepSeek-V3 full with two runs in flight
# on the worker and with one (SWITCHYARD_CUDA_RUNS_IN_FLIGHT=1), 128 sequences, 2 routers, 1 worker. Logs in $OUT.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
family=qwen3-moe
conc=256
e2e_step 2 js-new1 --drivers 6 --routers 3 --gpus 2
tar czf /tmp/new-dist.tgz expert-worker/dist packages/protocol/dist
tar xzf .carry/worker-old.tgz
e2e_step 2 js-old --drivers 6 --routers 3 --gpus 2
tar xzf /tmp/new-dist.tgz
e2e_step 2 js-new2 --drivers 6 --routers 3 --gpus 2
family=deepseek-v3
conc=128
export SWITCHYARD_CUDA_RUNS_IN_FLIGHT=2
e2e_step 1 r2-f2 --drivers 6 --routers 2
export SWITCHYARD_CUDA_RUNS_IN_FLIGHT=1
e2e_step 1 r2-f1 --drivers 6 --routers 2
