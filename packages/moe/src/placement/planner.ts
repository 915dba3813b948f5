// EPLB-style expert placement, pure. For each layer:
//   1. replicate: every expert gets one copy; each redundant slot goes to the expert with the largest
//      load / copies (DeepSeek EPLB `replicate_experts`; assumes the router splits an expert's tokens evenly
//      over its copies), never more copies than workers.
//   2. pack: copies, heaviest first, go to the lightest worker that has a free slot in this layer and does not
//      already hold that expert (EPLB `balanced_packing`: LPT with a cardinality limit). Slot counts per layer
//      differ by at most one between workers, and the extra slot rotates with the layer so that every worker's
//      total over all layers is within one of the mean (that total is what the cache must hold).
//   3. stability: with a previous plan, a copy first stays on a worker that held it before, as long as that
//      worker has a free slot and stays under the balance cap; only the rest is packed. Adding one worker to W
//      therefore moves about 1/(W+1) of the copies (the new worker's share), not a reshuffle.
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
  /** A kept copy may push its worker up to (1 + keepTolerance) × the layer's mean load (default 0.1). */
  keepTolerance?: number;
}

export interface PlanStats {
  /** (layer, expert) copies per worker, in plan.workers order. */
  slotsPerWorker: number[];
  /** (layer, expert) pairs with more than one copy. */
  replicatedExperts: number;
  /** Per layer: max over workers of expected load / mean worker load (1 = perfect). */
  imbalancePerLayer: number[];
  /** Mean and max of imbalancePerLayer. */
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
  const slotsPerLayer = experts + redundant;
  if (W > 0 && input.capacityPerWorker !== undefined && !input.capacityIsSoft) {
    checkInt("capacityPerWorker", input.capacityPerWorker, 1);
    const need = Math.ceil((layers * slotsPerLayer) / W);
    if (need > input.capacityPerWorker)
      throw new PlacementError(
        "capacityPerWorker",
        `${input.capacityPerWorker} slots per worker cannot hold ${layers} layers × ${slotsPerLayer} copies on ${W} workers (needs ${need})`,
      );
  }

  const prev = input.previous && input.previous.pool === pool ? input.previous : undefined;
  const replicas: number[][][] = [];
  for (let l = 0; l < layers; l++) {
    const load = input.load ? input.load[l].map((x) => x + 1e-9) : new Array<number>(experts).fill(1);
    if (W === 0) {
      replicas.push(Array.from({ length: experts }, () => []));
      continue;
    }
    const counts = replicateExperts(load, redundant, W);
    // Per-layer slot cap: base slots for everybody, one extra for `rem` workers chosen by rotation.
    const base = Math.floor(slotsPerLayer / W);
    const rem = slotsPerLayer % W;
    const cap = workers.map((_, w) => base + ((((w - l * rem) % W) + W) % W < rem ? 1 : 0));
    replicas.push(
      strategy === "contiguous"
        ? packContiguous(counts, W)
        : packBalanced(load, counts, cap, workers, prev, l, keepTolerance),
    );
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

function packBalanced(
  load: number[],
  counts: number[],
  cap: number[],
  workers: string[],
  prev: PlacementPlan | undefined,
  layer: number,
  tolerance: number,
): number[][] {
  const W = workers.length;
  const E = load.length;
  const copies: { e: number; w: number }[] = [];
  for (let e = 0; e < E; e++) for (let k = 0; k < counts[e]; k++) copies.push({ e, w: load[e] / counts[e] });
  // Heaviest first; ties by expert id so the result does not depend on sort stability.
  copies.sort((a, b) => b.w - a.w || a.e - b.e);
  const total = copies.reduce((s, c) => s + c.w, 0);
  const limit = (total / W) * (1 + tolerance);
  const used = new Array<number>(W).fill(0);
  const wload = new Array<number>(W).fill(0);
  const holders: number[][] = Array.from({ length: E }, () => []);
  const placed = new Array<boolean>(copies.length).fill(false);

  if (prev?.replicas[layer]) {
    const index = new Map(workers.map((id, i) => [id, i]));
    const kept: number[][] = Array.from({ length: E }, (_, e) =>
      (prev.replicas[layer][e] ?? []).map((h) => index.get(prev.workers[h]) ?? -1).filter((i) => i >= 0),
    );
    copies.forEach((c, i) => {
      const options = kept[c.e];
      // Among the previous holders still free, take the lightest that stays within the balance limit.
      let best = -1;
      for (const w of options) {
        if (used[w] >= cap[w] || holders[c.e].includes(w)) continue;
        if (wload[w] + c.w > limit && wload[w] > 0) continue;
        if (best < 0 || wload[w] < wload[best]) best = w;
      }
      if (best >= 0) {
        placed[i] = true;
        used[best]++;
        wload[best] += c.w;
        holders[c.e].push(best);
        kept[c.e] = options.filter((w) => w !== best);
      }
    });
  }

  copies.forEach((c, i) => {
    if (placed[i]) return;
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
      if (best < 0) return; // cannot happen while counts[e] <= W and total slots == total copies
    }
    used[best]++;
    wload[best] += c.w;
    holders[c.e].push(best);
  });
  return holders.map((h) => h.sort((a, b) => a - b));
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
    imbalance.push(W === 0 || mean === 0 ? 1 : Math.max(...wl) / mean);
  });
  return {
    slotsPerWorker: slots,
    replicatedExperts: replicated,
    imbalancePerLayer: imbalance,
    meanImbalance: imbalance.reduce((s, x) => s + x, 0) / Math.max(1, imbalance.length),
    maxImbalance: Math.max(1, ...imbalance),
    moved: movedCopies(prev, plan),
  };
}
