#!/bin/bash
# A/B of the router's hot path: new (working tree) vs old (3013d15) sources, overhead section, T=1,16
cd /work/main
for v in new old new old; do
  cp -r /tmp/ab/$v/* /work/main/
  BENCH_ONLY=overhead BENCH_TS=1,16 BENCH_OUT=/tmp/ab/out-$v-$(date +%H%M%S).json timeout 600 npx tsx --conditions=switchyard-source bench/router.ts > /tmp/ab/log-$v-$(date +%H%M%S).txt 2>&1
  echo "$v done $(date +%T)"
done
cp -r /tmp/ab/new/* /work/main/
echo restored
