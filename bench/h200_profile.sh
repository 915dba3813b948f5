#!/usr/bin/env bash
# Per-kernel GPU times (torch.profiler / CUPTI) of library variants at chosen cells, with PDL off so each kernel's
# span is its own work (with PDL a kernel's span includes its wait for the one before it). RUNS: `;`-separated
# "label|env|shapes|ts" (env: space-separated knobs, or SY_MOE_NOP=0 for the defaults). Usage, from the repo root
# there: RUNS="dflt|SY_MOE_NOP=0|qwen3-30b-a3b|8192;clm|SY_MOE_CLUSTER=2|qwen3-30b-a3b|8192" bash bench/h200_profile.sh
# BENCH_ARGS: more options for bench/h200_moe.py (e.g. "--rounds 1 --profile-calls 20 --profile-warm-ms 2000").
set -uo pipefail
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-"dyn|SY_MOE_NOP=0|qwen3-30b-a3b,deepseek-v3|8192;dyn-mixtral|SY_MOE_NOP=0|mixtral-8x7b|1024"}
source bench/h200_build_lib.sh
run() {  # label, env, shapes, ts
  mkdir -p /tmp/p
  env SY_MOE_PDL=0 $2 PYTHONUNBUFFERED=1 OUT=/tmp/p timeout 100 python3 bench/h200_moe.py $B/libsy_moe.so \
    --shapes "$3" --ts "$4" --no-loop --no-tune --profile ${BENCH_ARGS:-} > $OUT/profile-$1.log 2>&1
  say "$1 rc=$?"
  python3 - $OUT/profile-$1.log "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{") and '"kernels_us"' in line:
        r = json.loads(line)
        k = r["kernels_us"] or {}
        print(sys.argv[2], r["shape"], r["T"], "ms %.4f" % r["ms"], "sum_us %.0f" % sum(k.values()))
        for n, v in list(k.items())[:10]:
            print("   %9.1f  %s" % (v, n))
PY
}
IFS=';' read -ra runs <<< "$RUNS"
for r in "${runs[@]}"; do
  IFS='|' read -r label envs shapes ts <<< "$r"
  run "$label" "$envs" "$shapes" "$ts"
done
exit 0
