// Turns one round of a flush's assignments into one ExpertBatch layout per worker: rows grouped by expert into
// contiguous slices, each expert group sent to one replica (a hot group above `splitTokens` is split evenly
// across its replicas, EPLB's equal-split assumption). Pure: the caller copies token bytes and sends.

import { chooseReplica, type ReplicaChooser } from "./replicas.js";
import type { Assignment } from "./routing.js";

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
}

export function layoutRound(assignments: readonly Assignment[], o: LayoutOptions): FlushLayout {
  const groups = new Map<number, Assignment[]>();
  for (const a of assignments) {
    let g = groups.get(a.expert);
    if (!g) {
      g = [];
      groups.set(a.expert, g);
    }
    g.push(a);
  }
  // Biggest groups choose first: they move the load picture most (LPT order); ties by expert id.
  const order = [...groups.keys()].sort((a, b) => groups.get(b)!.length - groups.get(a)!.length || a - b);
  const assigned = new Float64Array(o.workers);
  const perWorker = new Map<number, { expert: number; rows: Assignment[] }[]>();
  const unplaced: Assignment[] = [];
  for (const e of order) {
    const rows = groups.get(e)!;
    const candidates = o.replicas[e] ?? [];
    const healthy = candidates.filter((w) => !o.exclude?.has(w) && o.chooser.view.healthy(w));
    const parts =
      rows.length > o.splitTokens && healthy.length > 1
        ? Math.min(healthy.length, Math.ceil(rows.length / o.splitTokens))
        : 1;
    const used = new Set<number>(o.exclude);
    for (let p = 0; p < parts; p++) {
      const lo = Math.floor((p * rows.length) / parts);
      const hi = Math.floor(((p + 1) * rows.length) / parts);
      const chunk = rows.slice(lo, hi);
      // Within one group each part takes a different replica.
      const w = chooseReplica(o.chooser, o.layer, e, candidates, assigned, parts > 1 ? used : o.exclude);
      if (w < 0) {
        unplaced.push(...chunk);
        continue;
      }
      used.add(w);
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
  for (const w of [...perWorker.keys()].sort((a, b) => a - b)) {
    const groupsOfW = perWorker.get(w)!.sort((a, b) => a.expert - b.expert);
    const slices: SliceLayout[] = [];
    const rows: Assignment[] = [];
    for (const g of groupsOfW) {
      slices.push({ expert: g.expert, offset: rows.length, count: g.rows.length });
      rows.push(...g.rows);
    }
    batches.push({ worker: w, slices, rows });
  }
  return { batches, unplaced, expertsTouched: groups.size };
}
