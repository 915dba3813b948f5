// The local mode's placement plan: the operator's planner over the generated checkpoint, as a pool would get it.
// Pure.

import {
  isMoeLayer,
  loadWithSharedSlices,
  type ModelSpec,
  type PlacementPlan,
  type PlanStats,
  planPlacement,
} from "@switchyard/moe";

/**
 * The plan for `workers` over `spec`: `redundant` extra copies (with more than one worker), the shared expert's
 * `slices` placed like experts, and the model's dense layers (DeepSeek first_k_dense_replace, Qwen mlp_only_layers)
 * left without copies, as the operator leaves them: a copy there would take a cache slot no batch ever uses.
 */
export function localPlan(
  spec: ModelSpec,
  workers: string[],
  redundant: number,
  slices: number,
): { plan: PlacementPlan; stats: PlanStats } {
  return planPlacement({
    pool: "local",
    layers: spec.layers,
    experts: spec.experts + slices,
    workers,
    redundantExperts: workers.length > 1 ? redundant : 0,
    denseLayers: Array.from({ length: spec.layers }, (_, l) => l).filter((l) => !isMoeLayer(spec, l)),
    load: slices > 0 ? loadWithSharedSlices(undefined, spec.layers, spec.experts, slices, spec.topK) : undefined,
  });
}
