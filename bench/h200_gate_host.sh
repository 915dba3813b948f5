#!/usr/bin/env bash
# On one H200 (kind nvidia-h200), from the repo root, with .carry/node.xz, .carry/e2e.tgz (bench/h200_pack_e2e.sh),
# .carry/test.tgz (bench/h200_pack_test.sh) and .carry/benchjs/ (bench/router-logits.ts and
# bench/router-gate-concurrency.ts as plain ESM, made by bench/h200_pack_benchjs.sh): what DeepSeek-V3's router gate
# costs on the H200 host, which in the end to end read ~310 us of CPU a token on one thread against 45-70 on the
# 2-core development machine (bench/results/h200-moe.md, "What bounds DeepSeek-V3 end to end").
#   1. the end-to-end check (tiny Mixtral, every answer) and the CUDA vitest, on this commit's code;
#   2. the host's CPUs, then the gate benches on the idle host (no load beside them): the shared gate pool under
#      1, 2 and 4 concurrent calls at 4 and 1 threads, and the per-token gate figures of npm run bench:router-logits;
#   3. DeepSeek-V3 full, 128 sequences, one router, one cuda worker: as the earlier runs (every process on every
#      CPU), then with the router's process on CPUs of its own (ROUTER_CPUS) and the rest (drivers, reference
#      threads, worker) on the others, in turn.
# Logs: one tarball $OUT/gate-host-logs.tgz (the device returns at most 8 files) and the summary on stdout.
source bench/h200_e2e_steps.sh
export PATH=$PWD/.carry:$PATH
LOGS=$OUT/gate-host
mkdir -p $LOGS
tiny_check_and_vitest
lscpu > $LOGS/lscpu.txt
grep -E "^Model name|^Thread|^Core|^Socket|^NUMA node|^L[23]|^CPU\(s\)" $LOGS/lscpu.txt
lscpu -e=CPU,CORE,SOCKET,NODE > $LOGS/lscpu-e.txt
ncpu=$(nproc)
for t in 4 1; do
  BENCH_OUT=$LOGS/gate-concurrency-t$t.json node .carry/benchjs/router-gate-concurrency.mjs --threads $t \
    > $LOGS/gate-concurrency-t$t.log 2>&1
  echo "== gate pool, $t threads (idle host)"; grep "round 1" $LOGS/gate-concurrency-t$t.log
done
BENCH_OUT=$LOGS/router-logits.json node .carry/benchjs/router-logits.mjs > $LOGS/router-logits.log 2>&1
echo "== router-logits (idle host)"; grep -iE "deepseek|qwen" $LOGS/router-logits.log | head -12
family=deepseek-v3
conc=128
export E2E_SECONDS=${E2E_SECONDS:-15}
e2e_step 1 shared-cpus --drivers 6 > /dev/null
# The router on ROUTER_CPUS (default the first 6), every other process of the run on the rest: the pinner moves
# every thread of the router's process once it exists; threads it starts later inherit the mask.
ROUTER_CPUS=${ROUTER_CPUS:-0-5}
rest="6-$((ncpu - 1))"
(
  taskset -pc "$rest" $BASHPID > /dev/null
  (
    for _ in $(seq 600); do
      pid=$(pgrep -f "router-service/dist/main.js" | head -1)
      if [ -n "$pid" ]; then
        taskset -apc "$ROUTER_CPUS" "$pid" > /dev/null && echo "router $pid pinned to $ROUTER_CPUS, the rest on $rest"
        break
      fi
      sleep 0.2
    done
  ) &
  e2e_step 1 router-own-cpus --drivers 6 > /dev/null
  wait
)
e2e_pack gate-host "e2e-*deepseek*.log"
