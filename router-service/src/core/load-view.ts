// What the replica choice reads of a worker's load and latency (core/replicas.ts WorkerLoadView), from the router's
// own counters and, while fresh, the Prometheus load signals (signals/prometheus.ts). Pure.

import type { SignalSnapshot } from "../signals/prometheus.js";

/**
 * Rows waiting at a worker. Prometheus: the rows it holds from every router (this one's included); `own`: what this
 * router sent and has not had answered (on the wire, queued, running). Each counts the other's part of the load, so
 * the larger of the two, not their sum, which would count this router's rows twice.
 */
export function outstandingRows(fresh: SignalSnapshot | null, worker: string, own: number): number {
  const q = fresh?.queueDepth.get(worker);
  return q !== undefined ? Math.max(q, own) : own;
}

/**
 * A worker's latency, one measure for every worker of a choice: while Prometheus answers a latency query, its run
 * time per batch, and 0 (unknown: no latency term) for a worker it has no sample for (idle for the query's rate
 * window); else the router's round-trip EWMA. Mixing the two would make an idle worker look slow: a round trip is
 * a run plus the transfers. Except for a worker whose last batches from this router failed (`failing`): its EWMA
 * carries the failure penalty (doubled per failure), which Prometheus cannot see (a worker that fails every batch
 * records no run time, so it would read 0, the fastest), so it is the larger of the two.
 */
export function latencyMs(
  fresh: SignalSnapshot | null,
  hasLatencyQuery: boolean,
  worker: string,
  roundTripMs: number,
  failing = false,
): number {
  if (fresh && hasLatencyQuery) {
    const run = fresh.latencyMs.get(worker) ?? 0;
    return failing ? Math.max(run, roundTripMs) : run;
  }
  return roundTripMs;
}
