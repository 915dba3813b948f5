#!/bin/bash
# A/B of the router's hot path: new (HEAD) vs old (25781ff, this session's start) sources, overhead section, T=1,16
cd /work/main
for v in new old new old; do
  cp -r /tmp/ab2/$v/* /work/main/
  BENCH_ONLY=overhead BENCH_TS=1,16 BENCH_OUT=/tmp/ab2/out-$v-$(date +%H%M%S).json timeout 600 npx tsx --conditions=switchyard-source bench/router.ts > /tmp/ab2/log-$v-$(date +%H%M%S).txt 2>&1
  echo "$v done $(date +%T)"
done
cp -r /tmp/ab2/new/* /work/main/
echo restored
