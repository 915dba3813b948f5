// Replica choice: for an expert group, which worker holding that expert gets it.
//
// score(w) = cacheAffinity * (expert not resident on w ? 1 : 0)
//          + load          * (outstanding(w) + assigned in this flush(w)) / loadScale
//          + latency       * max(0, (latency(w) / fastest eligible candidate's latency - 1) * weight(w) - 0.5)
// lowest score wins; ties go to the copy whose latency was sampled longest ago (never: oldest), then to the lower
// worker index, so the choice is deterministic for a given state.
// outstanding(w) comes from Prometheus (queue depth) while that signal is fresh, else from the router's own
// count of tokens in flight to w; latency from Prometheus or the router's EWMA of dispatch round trips.
// weight(w) halves for every LATENCY_HALF_LIFE_MS since the router last heard how fast w is (core/latency-average.ts):
// only a worker that answers batches gets its latency sampled, so without it one slow sample would keep a copy
// that reads slow out of the choice for good, with nothing ever to correct it. 0.5 is LATENCY_NOISE (below).

import type { PlacementWeights } from "@switchyard/moe";
import { LATENCY_HALF_LIFE_MS, latencyWeight } from "./latency-average.js";

/**
 * How much slower than the fastest candidate a replica may read before its latency costs anything (0.5: 1.5x).
 * Round-trip averages of identical replicas differ by that much from noise alone (three local workers on one
 * machine read 1.4 to 7.7 ms at the same moment), and a penalty for noise sends one copy more than its share, which
 * the planner does not plan for. It also lets a stale penalty fade to exactly 0: a faded but positive one would still
 * lose every tie at light load, so the copy would never get the batch that corrects it. A slower replica is still
 * steered by the load term: its rows stay outstanding longer.
 */
const LATENCY_NOISE = 0.5;

export interface WorkerLoadView {
  /** Tokens queued or in flight on worker i, in token units. */
  outstanding(i: number): number;
  /** Recent latency of worker i in ms (0 = unknown). */
  latencyMs(i: number): number;
  /**
   * How long ago worker i's latency was last sampled (or its last failure), in ms; Infinity: never (the oldest for a
   * tie; nothing of ours to fade); absent: always fresh.
   */
  latencyAgeMs?(i: number): number;
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
  /** Half-life of a latency reading's weight (ms); default LATENCY_HALF_LIFE_MS. */
  latencyHalfLifeMs?: number;
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
  const ageOf = c.view.latencyAgeMs;
  let best = -1;
  let bestScore = Number.POSITIVE_INFINITY;
  let bestAge = 0;
  for (const w of candidates) {
    if (!eligible(w)) continue;
    let s = 0;
    if (!c.view.resident(w, layer, expert)) s += c.weights.cacheAffinity;
    s += (c.weights.load * (c.view.outstanding(w) + assigned[w])) / c.loadScale;
    const l = c.view.latencyMs(w);
    const age = ageOf ? ageOf.call(c.view, w) : 0;
    if (l > fastest) {
      // A stale reading fades towards the fastest, never past it: an idle worker must not draw every batch.
      // (A copy never sampled here has no reading of ours to fade: a latency it has comes from Prometheus, in full.)
      const weight =
        age === Number.POSITIVE_INFINITY ? 1 : latencyWeight(age, c.latencyHalfLifeMs ?? LATENCY_HALF_LIFE_MS);
      s += c.weights.latency * Math.max(0, (l / fastest - 1) * weight - LATENCY_NOISE);
    }
    // A tie goes to the copy heard from longest ago (its reading is the stalest, and at light load, when every
    // score ties, this takes turns instead of sending everything to one copy), a copy never heard from first (else a
    // new one loses every tie to the copies already sampled), then to the lower index (among those never heard from
    // too: a fresh router's first batches go to the first copy).
    if (s < bestScore || (s === bestScore && (age > bestAge || (age === bestAge && w < best)))) {
      best = w;
      bestScore = s;
      bestAge = age;
    }
  }
  return best;
}
