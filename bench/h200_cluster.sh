#!/usr/bin/env bash
# One H200 call for the 2-CTA cluster variants of the persistent GEMMs (knob SY_MOE_CLUSTER: 1 = pairs of weight
# tiles share the activation tile, 2 = pairs of token tiles share the weight tile, both by TMA multicast; 0 = off):
# the cluster cases and stresses, the six compute-side cells timed with each setting, memcheck (h200_variants.sh).
# (The first attempt at 1, measured slower, was a patch, bench/results/logs/h200-cluster-multicast.patch; it is in
# the sources now, with the stage release fixed.) Usage, from the repo root there: bash bench/h200_cluster.sh
CASES=cluster VARIANTS="SY_MOE_CLUSTER=2;SY_MOE_CLUSTER=1;SY_MOE_CLUSTER=0" MEMCHECK=awkward-257 \
  exec bash "$(dirname "$0")/h200_variants.sh"
