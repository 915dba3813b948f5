// EPLB-style expert placement, pure. For each layer:
//   1. replicate: every expert gets one copy; each redundant slot goes to the expert with the largest
//      load / copies (DeepSeek EPLB `replicate_experts`; assumes the router splits an expert's tokens evenly
//      over its copies), never more copies than workers.
//   2. pack: copies, heaviest first, go to the lightest worker that has a free slot in this layer and does not
//      already hold that expert (EPLB `balanced_packing`: LPT with a cardinality limit). Slot counts per layer
//      differ by at most one between workers, and the extra slot rotates with the layer so that every worker's
//      total over all layers is within one of the mean (that total is what the cache must hold). This fresh
//      packing never looks at the previous plan, so its balance is what the heat allows, whatever came before.
//   3. stability, with a previous plan:
//      - keep: the previous layer stays as it is while it still fits (every expert placed, same slots per worker)
//        and its busiest worker carries at most (1 + keepTolerance) × the fresh packing's busiest. Planning again
//        from the same inputs with `previous` = the output therefore returns it unchanged (same version).
//      - otherwise map: the fresh packing's bins are laid onto worker ids so that they overlap the previous layer
//        the most (an assignment per slot class), then copies are swapped between workers back onto their
//        previous holders wherever no worker gets busier than (1 + keepTolerance) × the fresh packing's busiest.
//        Balance stays within that of the fresh plan's; moves are few: adding one worker to W moves about 1/(W+1)
//        of the copies (its share). Measured (64 experts + 8 redundant, 8 workers, Zipf 0.6, 4 layers), a heat
//        shift: 1.045 max/mean with keepTolerance 0.05, 54 copies moved, against fresh 1.002 and 247 moved;
//        with 0, the fresh balance and 165 moved.
//   A stability step that started from the previous plan and packed only the rest got stuck: workers keeping many
//   light copies filled their slots, and a heat shift left the plan at 1.19-1.26 max/mean where a fresh one gets
//   1.00 (64 and 256 experts, Zipf 0.6).
import { movedCopies, PlacementError, type PlacementPlan, sameAssignment } from "./plan.js";

export type PlacementStrategy = "balanced" | "contiguous";
const STRATEGIES: readonly PlacementStrategy[] = ["balanced", "contiguous"];

export interface PlanInput {
  pool: string;
  layers: number;
  experts: number;
  /** Worker ids in order (plan indices refer to this order). */
  workers: string[];
  /** Extra copies per layer for hot experts (EPLB redundant slots). Clamped to experts × (workers − 1). */
  redundantExperts?: number;
  /** (layer, expert) slots each worker can hold resident; undefined = unbounded. */
  capacityPerWorker?: number;
  /** When true, a plan needing more than capacityPerWorker slots is allowed (a host tier backs the cache). */
  capacityIsSoft?: boolean;
  /** Expected load ("heat") per [layer][expert], e.g. token counts over a window; default uniform. */
  load?: number[][];
  strategy?: PlacementStrategy;
  previous?: PlacementPlan;
  endpoints?: Record<string, string>;
  /**
   * The previous plan's layer is kept while its busiest worker carries at most (1 + keepTolerance) × the busiest of
   * a fresh packing under `load` (default 0.1): within that, moving weights is not worth it.
   */
  keepTolerance?: number;
  /**
   * Layers without routed experts (a dense MLP: DeepSeek first_k_dense_replace, Qwen mlp_only_layers). Their rows
   * are empty ([]), they take no cache slots and no part in the balance figures.
   */
  denseLayers?: readonly number[];
}

export interface PlanStats {
  /** (layer, expert) copies per worker, in plan.workers order. */
  slotsPerWorker: number[];
  /** (layer, expert) pairs with more than one copy. */
  replicatedExperts: number;
  /** Per layer: max over workers of expected load / mean worker load (1 = perfect); 1 for a dense layer. */
  imbalancePerLayer: number[];
  /** Mean and max of imbalancePerLayer over the layers with experts (a dense layer's 1 would flatter the mean). */
  meanImbalance: number;
  maxImbalance: number;
  /** Copies not held by the same worker id in the previous plan. */
  moved: number;
}

export interface PlanResult {
  plan: PlacementPlan;
  stats: PlanStats;
}

function checkInt(field: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) throw new PlacementError(field, `must be an integer >= ${min}, got ${v}`);
}

/** Copies per expert for one layer: EPLB greedy replication. */
export function replicateExperts(load: number[], redundant: number, maxCopies: number): number[] {
  const counts = load.map(() => 1);
  for (let r = 0; r < redundant; r++) {
    let best = -1;
    let bestScore = -1;
    for (let e = 0; e < load.length; e++) {
      if (counts[e] >= maxCopies) continue;
      const s = load[e] / counts[e];
      if (s > bestScore) {
        bestScore = s;
        best = e;
      }
    }
    if (best < 0) break;
    counts[best]++;
  }
  return counts;
}

export function planPlacement(input: PlanInput): PlanResult {
  const { pool, layers, experts, workers } = input;
  if (typeof pool !== "string" || pool === "") throw new PlacementError("pool", "must be a non-empty string");
  checkInt("layers", layers, 1);
  checkInt("experts", experts, 1);
  // validatePlan refuses an empty id, so a plan made with one could never be published
  workers.forEach((w, i) => {
    if (typeof w !== "string" || w === "")
      throw new PlacementError(`workers[${i}]`, `must be a non-empty string, got ${JSON.stringify(w)}`);
  });
  if (new Set(workers).size !== workers.length) throw new PlacementError("workers", "has duplicate ids");
  // An unknown strategy would silently plan as balanced; a NaN tolerance would silently lift the balance cap on
  // kept copies (every comparison with NaN is false).
  const strategy = input.strategy ?? "balanced";
  if (!STRATEGIES.includes(strategy))
    throw new PlacementError("strategy", `must be ${STRATEGIES.join(" or ")}, got ${JSON.stringify(strategy)}`);
  const keepTolerance = input.keepTolerance ?? 0.1;
  if (!Number.isFinite(keepTolerance) || keepTolerance < 0)
    throw new PlacementError("keepTolerance", `must be a finite number >= 0, got ${keepTolerance}`);
  const W = workers.length;
  const redundantIn = input.redundantExperts ?? 0;
  checkInt("redundantExperts", redundantIn, 0);
  const redundant = Math.min(redundantIn, experts * Math.max(0, W - 1));
  if (input.load) {
    if (input.load.length !== layers)
      throw new PlacementError("load", `has ${input.load.length} layers, want ${layers}`);
    input.load.forEach((row, l) => {
      if (row.length !== experts) throw new PlacementError(`load[${l}]`, `has ${row.length} experts, want ${experts}`);
      row.forEach((x, e) => {
        if (!Number.isFinite(x) || x < 0) throw new PlacementError(`load[${l}][${e}]`, `must be a finite number >= 0`);
      });
    });
  }
  const dense = new Set<number>();
  (input.denseLayers ?? []).forEach((l, i) => {
    if (!Number.isInteger(l) || l < 0 || l >= layers)
      throw new PlacementError(`denseLayers[${i}]`, `must be a layer index in [0, ${layers}), got ${l}`);
    dense.add(l);
  });
  const moeLayers = layers - dense.size;
  const slotsPerLayer = experts + redundant;
  if (W > 0 && input.capacityPerWorker !== undefined && !input.capacityIsSoft) {
    checkInt("capacityPerWorker", input.capacityPerWorker, 1);
    const need = Math.ceil((moeLayers * slotsPerLayer) / W);
    if (need > input.capacityPerWorker)
      throw new PlacementError(
        "capacityPerWorker",
        `${input.capacityPerWorker} slots per worker cannot hold ${moeLayers} layers × ${slotsPerLayer} copies on ${W} workers (needs ${need})`,
      );
  }

  const prev = input.previous && input.previous.pool === pool ? input.previous : undefined;
  // previous worker index -> index in `workers` (-1: gone)
  const index = new Map(workers.map((id, i) => [id, i]));
  const fromPrev = prev?.workers.map((id) => index.get(id) ?? -1);
  const replicas: number[][][] = [];
  let ordinal = 0; // MoE layers so far: the extra slot rotates over these, dense layers take none
  for (let l = 0; l < layers; l++) {
    if (dense.has(l)) {
      replicas.push([]);
      continue;
    }
    const load = input.load ? input.load[l].map((x) => x + 1e-9) : new Array<number>(experts).fill(1);
    if (W === 0) {
      replicas.push(Array.from({ length: experts }, () => []));
      continue;
    }
    const counts = replicateExperts(load, redundant, W);
    // Per-layer slot cap: base slots for everybody, one extra for `rem` workers chosen by rotation.
    const base = Math.floor(slotsPerLayer / W);
    const rem = slotsPerLayer % W;
    const cap = workers.map((_, w) => base + ((((w - ordinal * rem) % W) + W) % W < rem ? 1 : 0));
    ordinal++;
    if (strategy === "contiguous") {
      replicas.push(packContiguous(counts, W));
      continue;
    }
    // The previous layer in this plan's worker indices, one entry per expert of this layer (a previous plan may
    // list fewer, before the shared expert's slices came to the workers, or more); a holder that left is dropped.
    const row = prev?.replicas[l];
    const before =
      row &&
      Array.from({ length: experts }, (_, e) => (row[e] ?? []).map((h) => fromPrev?.[h] ?? -1).filter((w) => w >= 0));
    replicas.push(placeLayer(load, counts, cap, before, keepTolerance));
  }

  // The mean share fits (checked above), but a layout need not spread it evenly: contiguous gives expert e to worker
  // e mod W, so the first workers hold more. A worker whose copies outgrow its cache would thrash.
  if (W > 0 && input.capacityPerWorker !== undefined && !input.capacityIsSoft) {
    const held = new Array<number>(W).fill(0);
    for (const layer of replicas) for (const hs of layer) for (const w of hs) held[w]++;
    const most = Math.max(...held);
    if (most > input.capacityPerWorker)
      throw new PlacementError(
        "capacityPerWorker",
        `worker ${workers[held.indexOf(most)]} is planned ${most} copies, more than its ${input.capacityPerWorker} slots (strategy ${strategy})`,
      );
  }

  const plan: PlacementPlan = { version: 1, pool, workers: [...workers], replicas };
  if (input.endpoints) plan.endpoints = { ...input.endpoints };
  if (prev) {
    plan.version = sameAssignment(prev, plan) ? prev.version : prev.version + 1;
  }
  return { plan, stats: planStats(plan, input.load, prev) };
}

/** Expert e's copies on workers e, e+1, ... (mod W): the textbook expert-parallel layout, for comparison. */
function packContiguous(counts: number[], W: number): number[][] {
  return counts.map((c, e) => {
    const hs: number[] = [];
    for (let k = 0; k < c; k++) hs.push((e + k) % W);
    return hs.sort((a, b) => a - b);
  });
}

/** Worker loads of one layer (each copy carries its expert's load over its copy count). */
function workerLoads(holders: number[][], load: number[], W: number): number[] {
  const wl = new Array<number>(W).fill(0);
  holders.forEach((hs, e) => {
    for (const h of hs) wl[h] += load[e] / hs.length;
  });
  return wl;
}

/**
 * Whether a previous layer can stand as this one: every expert placed, on distinct workers, and each worker holding
 * exactly its slots of this layer (so the per-worker totals, which the cache is sized by, stay as planned).
 */
function layerFits(before: number[][], E: number, cap: number[]): boolean {
  if (before.length !== E) return false;
  const used = new Array<number>(cap.length).fill(0);
  for (const hs of before) {
    if (hs.length === 0 || new Set(hs).size !== hs.length) return false;
    for (const h of hs) used[h]++;
  }
  return used.every((n, w) => n === cap[w]);
}

function placeLayer(
  load: number[],
  counts: number[],
  cap: number[],
  before: number[][] | undefined,
  tolerance: number,
): number[][] {
  const W = cap.length;
  const fresh = packBalanced(load, counts, cap);
  if (!before) return fresh;
  // One bound for keeping and for mapping: a layer may leave at most `tolerance` of the fresh balance on the table.
  // What the mapping returns is within it, so planning again from its output keeps it (no second version). A
  // relative hair above, so that float sums in another order do not decide keep or move.
  const freshMax = Math.max(...workerLoads(fresh, load, W));
  const bound = freshMax * (1 + tolerance) * (1 + 1e-9);
  if (layerFits(before, load.length, cap)) {
    const sorted = before.map((hs) => [...hs].sort((a, b) => a - b));
    if (Math.max(...workerLoads(sorted, load, W)) <= bound) return sorted;
  }
  return keepMost(fresh, load, cap, before, bound);
}

/** EPLB balanced packing of one layer's copies into workers with `cap` slots each; no previous plan. */
function packBalanced(load: number[], counts: number[], cap: number[]): number[][] {
  const W = cap.length;
  const E = load.length;
  const copies: { e: number; w: number }[] = [];
  for (let e = 0; e < E; e++) for (let k = 0; k < counts[e]; k++) copies.push({ e, w: load[e] / counts[e] });
  // Heaviest first; ties by expert id so the result does not depend on sort stability.
  copies.sort((a, b) => b.w - a.w || a.e - b.e);
  const used = new Array<number>(W).fill(0);
  const wload = new Array<number>(W).fill(0);
  const holders: number[][] = Array.from({ length: E }, () => []);
  for (const c of copies) {
    let best = -1;
    for (let w = 0; w < W; w++) {
      if (used[w] >= cap[w] || holders[c.e].includes(w)) continue;
      if (best < 0 || wload[w] < wload[best] || (wload[w] === wload[best] && used[w] < used[best])) best = w;
    }
    if (best < 0) {
      // Every worker with room already holds this expert (the slot caps cornered us). Repair by a swap: move
      // some other expert's copy from a full worker v that lacks e onto a worker w with room that lacks that
      // expert, then put this copy on v. Two copies of one expert on one worker would waste a slot.
      best = swapForRoom(c.e, holders, used, cap, wload, load, counts);
      if (best < 0) continue; // cannot happen while counts[e] <= W and total slots == total copies
    }
    used[best]++;
    wload[best] += c.w;
    holders[c.e].push(best);
  }
  return holders.map((h) => h.sort((a, b) => a - b));
}

/**
 * The fresh packing laid onto worker ids to keep the most of `before`: (1) its bins (the fresh worker indices) are
 * assigned to workers of the same slot count by overlap with what each worker held before; (2) a copy that moved is
 * swapped with one that moved too on a worker that held it before, while neither worker exceeds `bound` ((1 +
 * keepTolerance) × the fresh packing's busiest). Each swap keeps one or two more copies where they were; it stops when none does.
 */
function keepMost(fresh: number[][], load: number[], cap: number[], before: number[][], bound: number): number[][] {
  const W = cap.length;
  const E = load.length;
  const had = new Uint8Array(W * E); // had[w * E + e]: worker w held expert e before
  before.forEach((hs, e) => {
    for (const h of hs) had[h * E + e] = 1;
  });
  // (1) bins -> workers, within each slot class (a bin of base+1 copies must land on a worker with base+1 slots).
  const bins: number[][] = Array.from({ length: W }, () => []); // experts in each fresh bin
  fresh.forEach((hs, e) => {
    for (const h of hs) bins[h].push(e);
  });
  const toWorker = new Array<number>(W).fill(-1);
  const index = new Int32Array(W).fill(-1); // worker -> its place in the slot class being assigned
  for (const size of new Set(cap)) {
    const members = cap.flatMap((c, w) => (c === size ? [w] : []));
    members.forEach((w, i) => {
      index[w] = i;
    });
    let pick: number[];
    if (members.length <= HUNGARIAN_MAX) {
      const gain = members.map((b) => members.map((w) => bins[b].reduce((n, e) => n + had[w * E + e], 0)));
      pick = assignHungarian(gain);
    } else {
      // Large classes: only the (bin, worker) pairs that overlap at all, found from each bin's experts' previous
      // holders. The dense members x members matrix cost O(W^2) per layer: 2.7 s of a heat replan at 1024 workers
      // x 61 layers, long enough to stall the operator's event loop (and its leader lease).
      const pairs = new Map<number, number>(); // i * n + j -> overlap
      const n = members.length;
      members.forEach((b, i) => {
        for (const e of bins[b])
          for (const h of before[e]) {
            const j = index[h];
            if (j >= 0) pairs.set(i * n + j, (pairs.get(i * n + j) ?? 0) + 1);
          }
      });
      pick = assignGreedy(
        n,
        [...pairs].map(([k, g]) => [g, Math.floor(k / n), k % n]),
      );
    }
    pick.forEach((j, i) => {
      toWorker[members[i]] = members[j];
    });
    for (const w of members) index[w] = -1;
  }
  const on: number[][] = Array.from({ length: W }, () => []); // experts on each worker
  const has = new Uint8Array(W * E);
  bins.forEach((es, b) => {
    const w = toWorker[b];
    on[w] = [...es];
    for (const e of es) has[w * E + e] = 1;
  });
  const counts = fresh.map((hs) => hs.length);
  const cw = load.map((x, e) => x / counts[e]);
  const wl = on.map((es) => es.reduce((s, e) => s + cw[e], 0));
  // (2) swaps. Every swap keeps at least one more copy in place, so this ends within (copies) rounds.
  let improved = true;
  while (improved) {
    improved = false;
    for (let a = 0; a < W; a++) {
      for (let i = 0; i < on[a].length; i++) {
        const e = on[a][i];
        if (had[a * E + e]) continue;
        let done = false;
        for (const b of before[e]) {
          if (b === a || has[b * E + e]) continue;
          // Swap e (a -> b) with a moved copy f (b -> a); prefer an f that a held before (two kept, not one).
          let best = -1;
          for (let j = 0; j < on[b].length; j++) {
            const f = on[b][j];
            if (had[b * E + f] || has[a * E + f]) continue;
            if (wl[a] - cw[e] + cw[f] > bound || wl[b] + cw[e] - cw[f] > bound) continue;
            if (best < 0 || (had[a * E + f] && !had[a * E + on[b][best]])) best = j;
            if (had[a * E + f]) break;
          }
          if (best < 0) continue;
          const f = on[b][best];
          on[a][i] = f;
          on[b][best] = e;
          has[a * E + e] = 0;
          has[b * E + f] = 0;
          has[a * E + f] = 1;
          has[b * E + e] = 1;
          wl[a] += cw[f] - cw[e];
          wl[b] += cw[e] - cw[f];
          improved = done = true;
          break;
        }
        if (done) i--; // slot i now holds f: look at it again
      }
    }
  }
  const holders: number[][] = Array.from({ length: E }, () => []);
  on.forEach((es, w) => {
    for (const e of es) holders[e].push(w);
  });
  return holders.map((h) => h.sort((a, b) => a - b));
}

/** Slot classes up to this size get the optimal assignment (O(n³)); larger ones the greedy one. */
const HUNGARIAN_MAX = 64;

/**
 * Row i -> column pick[i] of an n x n gain matrix given by its positive entries `pairs` ([gain, i, j]), a
 * permutation that favours large gains: pairs by gain, largest first (ties by row, then column).
 */
function assignGreedy(n: number, pairs: [number, number, number][]): number[] {
  pairs.sort((x, y) => y[0] - x[0] || x[1] - y[1] || x[2] - y[2]);
  const pick = new Array<number>(n).fill(-1);
  const taken = new Array<boolean>(n).fill(false);
  for (const [, i, j] of pairs) {
    if (pick[i] >= 0 || taken[j]) continue;
    pick[i] = j;
    taken[j] = true;
  }
  // rows with no overlap anywhere: the free columns in order (a bin on its own index when that is free). Columns are
  // only ever taken, so the first free one moves forward: one pass, not a scan per row.
  let free = 0;
  for (let i = 0; i < n; i++) {
    if (pick[i] >= 0) continue;
    while (taken[free]) free++;
    const j = !taken[i] ? i : free;
    pick[i] = j;
    taken[j] = true;
  }
  return pick;
}

/** Row i -> column pick[i], a permutation maximising the summed gain (Hungarian method, potentials, O(n³)). */
function assignHungarian(gain: number[][]): number[] {
  const n = gain.length;
  let top = 0;
  for (const row of gain) for (const g of row) top = Math.max(top, g);
  // minimise cost = top - gain; 1-based arrays as in the textbook formulation
  const u = new Array<number>(n + 1).fill(0);
  const v = new Array<number>(n + 1).fill(0);
  const p = new Array<number>(n + 1).fill(0);
  const way = new Array<number>(n + 1).fill(0);
  for (let i = 1; i <= n; i++) {
    p[0] = i;
    let j0 = 0;
    const minv = new Array<number>(n + 1).fill(Number.POSITIVE_INFINITY);
    const used = new Array<boolean>(n + 1).fill(false);
    do {
      used[j0] = true;
      const i0 = p[j0];
      let delta = Number.POSITIVE_INFINITY;
      let j1 = 0;
      for (let j = 1; j <= n; j++) {
        if (used[j]) continue;
        const cur = top - gain[i0 - 1][j - 1] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (let j = 0; j <= n; j++) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else minv[j] -= delta;
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 !== 0);
  }
  const pick = new Array<number>(n).fill(-1);
  for (let j = 1; j <= n; j++) pick[p[j] - 1] = j - 1;
  return pick;
}

function swapForRoom(
  e: number,
  holders: number[][],
  used: number[],
  cap: number[],
  wload: number[],
  load: number[],
  counts: number[],
): number {
  const W = used.length;
  for (let w = 0; w < W; w++) {
    if (used[w] >= cap[w]) continue;
    for (let v = 0; v < W; v++) {
      if (v === w || holders[e].includes(v)) continue;
      for (let f = 0; f < holders.length; f++) {
        if (f === e || !holders[f].includes(v) || holders[f].includes(w)) continue;
        const fw = load[f] / counts[f];
        holders[f] = holders[f].map((h) => (h === v ? w : h));
        used[w]++;
        used[v]--;
        wload[w] += fw;
        wload[v] -= fw;
        return v;
      }
    }
  }
  return -1;
}

/** Slots per worker, replication, expected max/mean load per layer (load split evenly over copies), moves. */
export function planStats(plan: PlacementPlan, load?: number[][], prev?: PlacementPlan): PlanStats {
  const W = plan.workers.length;
  const slots = new Array<number>(W).fill(0);
  let replicated = 0;
  const imbalance: number[] = [];
  const moe: number[] = [];
  plan.replicas.forEach((layer, l) => {
    const wl = new Array<number>(W).fill(0);
    layer.forEach((hs, e) => {
      if (hs.length > 1) replicated++;
      const x = load ? load[l][e] : 1;
      for (const h of hs) {
        slots[h]++;
        wl[h] += x / hs.length;
      }
    });
    const mean = wl.reduce((s, x) => s + x, 0) / Math.max(1, W);
    const x = W === 0 || mean === 0 ? 1 : Math.max(...wl) / mean;
    imbalance.push(x);
    if (layer.length > 0) moe.push(x);
  });
  return {
    slotsPerWorker: slots,
    replicatedExperts: replicated,
    imbalancePerLayer: imbalance,
    meanImbalance: moe.length === 0 ? 1 : moe.reduce((s, x) => s + x, 0) / moe.length,
    maxImbalance: Math.max(1, ...moe),
    moved: movedCopies(prev, plan),
  };
}
