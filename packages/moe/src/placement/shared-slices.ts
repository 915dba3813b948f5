// The shared expert's slices (spec.ts sharedSlices) in a placement plan: a plan whose layers list
// `experts + slices` entries places slice j as expert id `experts + j`, and the router then sends every token to
// every slice instead of computing the shared expert itself. A plan of `experts` entries keeps the shared expert in
// the router. Pure.

import { PlacementError, type PlacementPlan } from "./plan.js";

/**
 * Expected load per [layer][expert id] with the slices appended: each slice sees every token, a routed expert
 * topK/experts of them. `routed` is the routed experts' load over some window (token-expert assignments, e.g.
 * the router's heat), or undefined for uniform routing. The slices' load is then the tokens of that window.
 */
export function loadWithSharedSlices(
  routed: number[][] | undefined,
  layers: number,
  experts: number,
  slices: number,
  topK: number,
): number[][] {
  if (!Number.isInteger(topK) || topK < 1) throw new PlacementError("topK", `must be an integer >= 1, got ${topK}`);
  const out: number[][] = [];
  for (let l = 0; l < layers; l++) {
    const row = routed?.[l] ?? new Array<number>(experts).fill(1);
    if (row.length !== experts) throw new PlacementError(`load[${l}]`, `has ${row.length} experts, want ${experts}`);
    const tokens = row.reduce((s, x) => s + x, 0) / topK;
    out.push([...row, ...new Array<number>(slices).fill(tokens)]);
  }
  return out;
}

/**
 * How many shared slices a plan places: 0 when its layers list the routed experts only, `slices` when every layer
 * lists them too. Throws PlacementError on anything else (a plan for another model, or layers that disagree).
 */
export function placedSharedSlices(plan: PlacementPlan, experts: number, slices: number): number {
  let placed: number | undefined;
  plan.replicas.forEach((layer, l) => {
    const here = layer.length - experts;
    if (here !== 0 && here !== slices)
      throw new PlacementError(
        `plan.replicas[${l}]`,
        `has ${layer.length} entries; the model has ${experts} experts${slices > 0 ? ` (${experts + slices} with its ${slices} shared slices)` : ""}`,
      );
    if (placed !== undefined && here !== placed)
      throw new PlacementError(`plan.replicas[${l}]`, "places the shared slices where other layers do not");
    placed = here;
  });
  return placed ?? 0;
}
