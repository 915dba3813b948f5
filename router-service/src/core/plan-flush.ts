// Turns one round of a flush's assignments into one ExpertBatch layout per worker: rows grouped by expert into
// contiguous slices, each expert group sent to one replica (a hot group above `splitTokens` is split evenly
// across its replicas, EPLB's equal-split assumption). Pure: the caller copies token bytes and sends.

import { chooseReplica, type ReplicaChooser } from "./replicas.js";
import { type Assignment, groupByExpert } from "./routing.js";

export interface SliceLayout {
  expert: number;
  offset: number;
  count: number;
}

export interface WorkerBatchLayout {
  worker: number;
  slices: SliceLayout[];
  /** Row r of the batch is rows[r] (item, token, slot of the flush). */
  rows: Assignment[];
}

export interface FlushLayout {
  batches: WorkerBatchLayout[];
  /** Assignments whose expert has no healthy replica: the requests holding them fail UNAVAILABLE. */
  unplaced: Assignment[];
  expertsTouched: number;
}

export interface LayoutOptions {
  layer: number;
  /** replicas[expert] = worker indices holding it. */
  replicas: readonly (readonly number[])[];
  workers: number;
  chooser: ReplicaChooser;
  /** Expert groups larger than this are split across replicas. */
  splitTokens: number;
  exclude?: ReadonlySet<number>;
  /**
   * Per expert, more workers left out for that expert alone: a worker that refused one expert of a batch (its plan
   * no longer holds it) still takes the others.
   */
  excludeFor?: ReadonlyMap<number, ReadonlySet<number>>;
}

/** The workers left out for expert `e`: every expert's, and `e`'s own. */
function excludedFor(o: LayoutOptions, e: number): ReadonlySet<number> | undefined {
  const own = o.excludeFor?.get(e);
  if (!own || own.size === 0) return o.exclude;
  if (!o.exclude || o.exclude.size === 0) return own;
  return new Set([...o.exclude, ...own]);
}

export function layoutRound(assignments: readonly Assignment[], o: LayoutOptions): FlushLayout {
  const groups = groupByExpert(assignments);
  // Biggest groups choose first: they move the load picture most (LPT order); ties by expert id.
  const order = [...groups.keys()];
  if (order.length > 1) order.sort((a, b) => groups.get(b)!.length - groups.get(a)!.length || a - b);
  const assigned = new Float64Array(o.workers);
  const perWorker = new Map<number, { expert: number; rows: Assignment[] }[]>();
  const unplaced: Assignment[] = [];
  for (const e of order) {
    const rows = groups.get(e)!;
    const candidates = o.replicas[e] ?? [];
    const exclude = excludedFor(o, e);
    // Split only a group above splitTokens, and only across healthy replicas (counted only then).
    let parts = 1;
    if (rows.length > o.splitTokens && candidates.length > 1) {
      // over the replicas that have the expert loaded, when any has (chooseReplica takes those first)
      const view = o.chooser.view;
      let healthy = 0;
      let serving = 0;
      for (const w of candidates) {
        if (exclude?.has(w) || !view.healthy(w)) continue;
        healthy++;
        if (!view.serves || view.serves(w, o.layer, e)) serving++;
      }
      const usable = serving > 0 ? serving : healthy;
      if (usable > 1) parts = Math.min(usable, Math.ceil(rows.length / o.splitTokens));
    }
    const used = parts > 1 ? new Set<number>(exclude) : null;
    for (let p = 0; p < parts; p++) {
      const lo = Math.floor((p * rows.length) / parts);
      const hi = Math.floor(((p + 1) * rows.length) / parts);
      const chunk = parts === 1 ? rows : rows.slice(lo, hi);
      // Within one group each part takes a different replica.
      const w = chooseReplica(o.chooser, o.layer, e, candidates, assigned, used ?? exclude);
      if (w < 0) {
        unplaced.push(...chunk);
        continue;
      }
      used?.add(w);
      assigned[w] += chunk.length;
      let list = perWorker.get(w);
      if (!list) {
        list = [];
        perWorker.set(w, list);
      }
      list.push({ expert: e, rows: chunk });
    }
  }
  const batches: WorkerBatchLayout[] = [];
  const workers = [...perWorker.keys()];
  if (workers.length > 1) workers.sort((a, b) => a - b);
  for (const w of workers) {
    const groupsOfW = perWorker.get(w)!;
    if (groupsOfW.length > 1) groupsOfW.sort((a, b) => a.expert - b.expert);
    const slices: SliceLayout[] = [];
    // One group: its rows array as it is (no copy).
    const rows: Assignment[] = groupsOfW.length === 1 ? groupsOfW[0].rows : [];
    for (const g of groupsOfW) {
      slices.push({ expert: g.expert, offset: groupsOfW.length === 1 ? 0 : rows.length, count: g.rows.length });
      if (groupsOfW.length > 1) rows.push(...g.rows);
    }
    batches.push({ worker: w, slices, rows });
  }
  return { batches, unplaced, expertsTouched: groups.size };
}
