// Replica choice: for an expert group, which worker holding that expert gets it.
//
// score(w) = cacheAffinity * (expert not resident on w ? 1 : 0)
//          + load          * (outstanding(w) + assigned in this flush(w)) / loadScale
//          + latency       * (latency(w) / fastest eligible candidate's latency - 1)
// lowest score wins; ties go to the lower worker index, so the choice is deterministic for a given state.
// outstanding(w) comes from Prometheus (queue depth) while that signal is fresh, else from the router's own
// count of tokens in flight to w; latency from Prometheus or the router's EWMA of dispatch round trips.

import type { PlacementWeights } from "@switchyard/moe";

export interface WorkerLoadView {
  /** Tokens queued or in flight on worker i, in token units. */
  outstanding(i: number): number;
  /** Recent latency of worker i in ms (0 = unknown). */
  latencyMs(i: number): number;
  /** Whether worker i holds expert e of layer resident right now. */
  resident(i: number, layer: number, expert: number): boolean;
  /** Whether worker i can take work. */
  healthy(i: number): boolean;
  /**
   * Whether worker i has loaded (layer, expert) by its last Status (true while unknown). A new plan reaches the
   * router and the workers at different moments: a replica the plan names but whose worker has not loaded it yet
   * would refuse the rows, so one that has it goes first.
   */
  serves?(i: number, layer: number, expert: number): boolean;
}

export interface ReplicaChooser {
  weights: PlacementWeights;
  /** Normalises load: this many tokens of extra load cost as much as one cache miss (cacheAffinity = load = 1). */
  loadScale: number;
  view: WorkerLoadView;
}

/**
 * Picks the best replica among `candidates` for `tokens` tokens of `expert`. `assigned` holds tokens already
 * given to each worker in this flush (updated by the caller), so successive groups water-fill across replicas.
 * Replicas whose worker reports the expert loaded go first; only when none does are the others tried (their
 * answer then says what is wrong). Returns -1 when no candidate is healthy or none is excluded.
 */
export function chooseReplica(
  c: ReplicaChooser,
  layer: number,
  expert: number,
  candidates: readonly number[],
  assigned: Float64Array,
  exclude?: ReadonlySet<number>,
): number {
  const best = bestReplica(c, layer, expert, candidates, assigned, exclude, true);
  return best >= 0 || !c.view.serves ? best : bestReplica(c, layer, expert, candidates, assigned, exclude, false);
}

function bestReplica(
  c: ReplicaChooser,
  layer: number,
  expert: number,
  candidates: readonly number[],
  assigned: Float64Array,
  exclude: ReadonlySet<number> | undefined,
  servingOnly: boolean,
): number {
  const serves = servingOnly ? c.view.serves : undefined;
  const eligible = (w: number) =>
    !exclude?.has(w) && c.view.healthy(w) && (!serves || serves.call(c.view, w, layer, expert));
  // Only replicas that may take the rows set the reference: one that is down, excluded or not serving (often one
  // that answered errors fast) would otherwise inflate every latency term past the cache and load terms.
  let fastest = Number.POSITIVE_INFINITY;
  for (const w of candidates) {
    if (!eligible(w)) continue;
    const l = c.view.latencyMs(w);
    if (l > 0 && l < fastest) fastest = l;
  }
  let best = -1;
  let bestScore = Number.POSITIVE_INFINITY;
  for (const w of candidates) {
    if (!eligible(w)) continue;
    let s = 0;
    if (!c.view.resident(w, layer, expert)) s += c.weights.cacheAffinity;
    s += (c.weights.load * (c.view.outstanding(w) + assigned[w])) / c.loadScale;
    const l = c.view.latencyMs(w);
    if (l > 0 && Number.isFinite(fastest)) s += c.weights.latency * (l / fastest - 1);
    if (s < bestScore || (s === bestScore && w < best)) {
      best = w;
      bestScore = s;
    }
  }
  return best;
}
