#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz and .carry/e2e.tgz (bench/h200_pack_e2e.sh):
# what bounds DeepSeek-V3's end to end past 128 sequences, where the router's gate products held the rate at ~3000
# tokens/s with the GPU busy 27-40% (bench/results/h200-moe.md, "Session of 2026-11-30 06:06 UTC"). One call, in turn,
# CONC sequences (default 256), E2E_SECONDS each (default 12), one cuda worker, six driver threads:
#   1. the default (the router gates, 4 gate threads);
#   2. 8 gate threads (SWITCHYARD_ROUTER_GATE_THREADS; DeepSeek-V3's 8 panels split a call over at most 8);
#   3. two router replicas (--routers 2: each its own gate threads);
#   4. the engine's gate (--gate engine: the drivers send router_logits, the router gates nothing itself);
#   5. the default again (drift).
# Also flightsN (RoutingPolicy.batching.flushesInFlight N, default 2), routers2-flightsN (the same, two replicas),
# batchN (N sequences a Forward, as an engine's step: --engine-batch), runsN / routers2-runsN (the worker's CUDA runs in
# flight, SWITCHYARD_CUDA_RUNS_IN_FLIGHT), nomerge / routers2-nomerge (queued batches not merged into one run,
# SWITCHYARD_CUDA_MERGE_BATCHES=off), and grpc / routers2-grpc (the drivers reach
# the router by gRPC ForwardStreams, --engine-transport grpc; since 2026-11-30 09:00 UTC every other run uses the
# router's TCP data path, the local mode's default).
# FAMILY (default deepseek-v3) runs another family at its full size. RUNS picks and orders them ("default threads8 routers2 engine default"). Logs: $OUT/dsv3-bounds-logs.tgz and the
# summary.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
export E2E_SECONDS=${E2E_SECONDS:-12}
family=${FAMILY:-deepseek-v3}
conc=${CONC:-256}
i=0
for run in ${RUNS:-default threads8 routers2 engine default}; do
  i=$((i + 1))
  case $run in
    default) e2e_step 1 b$i-default --drivers 6 > /dev/null ;;
    threads8) SWITCHYARD_ROUTER_GATE_THREADS=8 e2e_step 1 b$i-threads8 --drivers 6 > /dev/null ;;
    routers2) e2e_step 1 b$i-routers2 --drivers 6 --routers 2 > /dev/null ;;
    engine) e2e_step 1 b$i-engine --drivers 6 --gate engine > /dev/null ;;
    grpc) e2e_step 1 b$i-grpc --drivers 6 --engine-transport grpc > /dev/null ;;
    routers2-grpc) e2e_step 1 b$i-routers2-grpc --drivers 6 --routers 2 --engine-transport grpc > /dev/null ;;
    # batchN: N sequences a Forward (--engine-batch, an engine's step over its batch); the default is 1
    batch*) e2e_step 1 b$i-$run --drivers 6 --engine-batch ${run#batch} > /dev/null ;;
    # flightsN: RoutingPolicy.batching.flushesInFlight N (the default is 2); routers2-flightsN: the same on two replicas
    flights*) e2e_step 1 b$i-$run --drivers 6 --policy "{\"batching\":{\"flushesInFlight\":${run#flights}}}" > /dev/null ;;
    # runsN / routers2-runsN: SWITCHYARD_CUDA_RUNS_IN_FLIGHT N on the worker (batches staged and queued on the GPU at
    # once, 1-3; the default is 2), one router or two
    runs*) SWITCHYARD_CUDA_RUNS_IN_FLIGHT=${run#runs} e2e_step 1 b$i-$run --drivers 6 > /dev/null ;;
    routers2-runs*) SWITCHYARD_CUDA_RUNS_IN_FLIGHT=${run#routers2-runs} e2e_step 1 b$i-$run --drivers 6 --routers 2 > /dev/null ;;
    # nomerge / routers2-nomerge: SWITCHYARD_CUDA_MERGE_BATCHES=off (each queued batch its own run, as before
    # 2026-11-30 11:15 UTC)
    nomerge) SWITCHYARD_CUDA_MERGE_BATCHES=off e2e_step 1 b$i-$run --drivers 6 > /dev/null ;;
    routers2-nomerge) SWITCHYARD_CUDA_MERGE_BATCHES=off e2e_step 1 b$i-$run --drivers 6 --routers 2 > /dev/null ;;
    routers2-flights*)
      e2e_step 1 b$i-$run --drivers 6 --routers 2 --policy "{\"batching\":{\"flushesInFlight\":${run#routers2-flights}}}" \
        > /dev/null ;;
    *) echo "unknown run $run" ;;
  esac
done
e2e_pack ${FAMILY:+$FAMILY-}dsv3-bounds "e2e-*$family*.log"
