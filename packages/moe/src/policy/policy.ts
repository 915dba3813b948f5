// The resolved RoutingPolicy: the router's per-pool configuration after defaulting and validation.
// The operator turns RoutingPolicy custom resources into this JSON (inside the router ConfigMap); the router
// validates it again on every (re)load, because a config file is input like any other.

/** What happens to (token, expert) assignments above an expert's capacity in one flush. */
export type OverflowPolicy = "drop" | "spill" | "queue";

export interface GatingPolicy {
  /** Experts per token; null = the model's own top-k (ModelSpec). */
  topK: number | null;
  /** Top-p dynamic routing: smallest set of experts whose probability mass reaches topP; null = off. */
  topP: number | null;
  /** Cap on experts per token under top-p; null = the model's top-k times 2, at most the expert count. */
  maxK: number | null;
  /**
   * Capacity per expert per flush = ceil(capacityFactor * assignments / experts). null = dropless
   * (no capacity limit), the default.
   */
  capacityFactor: number | null;
  /**
   * drop: assignments over capacity are dropped, lowest gate weight first (ties: later token first), counted.
   * spill: they move to the token's next-best expert that still has room (needs scores: router-computed or
   *        logits input); with no room anywhere they are dropped.
   * queue: they run in a later dispatch round of the same flush (bounded per-expert work, no drops, more latency).
   */
  overflow: OverflowPolicy;
}

export interface BatchingPolicy {
  /** false: every request is dispatched alone as soon as it arrives (the baseline batching is measured against). */
  enabled: boolean;
  /** A flush happens as soon as this many tokens are queued for one (pool, layer). */
  maxBatchTokens: number;
  /** ... or this long after the first queued request, whichever comes first. 0 = next event-loop turn. */
  maxWaitMs: number;
  /** Tokens queued plus in flight per pool above which new requests fail with RESOURCE_EXHAUSTED. */
  maxQueueTokens: number;
  /**
   * Flushes of one (pool, layer) that may run at once. 1: a request that arrives while one runs waits for it and
   * leaves with everything that gathered meanwhile (the largest batches). More: the next flush's gating and
   * transfers overlap the running one's time on the workers (DeepSeek-V3 on one H200 worker: +9% tokens/s at 2,
   * bench/results/h200-moe.md).
   */
  flushesInFlight: number;
}

/** Weights of the replica-choice score: lower score wins. All >= 0; they need not sum to 1. */
export interface PlacementWeights {
  /** Penalty for a replica that does not hold the expert resident (a cache miss costs a weight load). */
  cacheAffinity: number;
  /** Penalty per unit of normalised outstanding work (router counters, or Prometheus queue depth). */
  load: number;
  /** Penalty per unit of normalised observed dispatch latency (EWMA). */
  latency: number;
}

export interface LoadSignalQueries {
  /** PromQL returning one sample per worker (label `worker`): queued work in rows, e.g. switchyard_worker_queued_rows. */
  queueDepth: string | null;
  /** PromQL returning one sample per worker (label `worker`): recent run latency in seconds. */
  latencySeconds: string | null;
}

export interface LoadSignalsPolicy {
  /** Base URL of the Prometheus HTTP API, e.g. http://prometheus:9090. null = router's own counters only. */
  prometheusUrl: string | null;
  queries: LoadSignalQueries;
  /** Interval between query rounds. */
  refreshMs: number;
  /** Signals older than this are stale: the router falls back to its own counters. */
  stalenessMs: number;
  /** Per-query HTTP timeout; a slow Prometheus counts as down. Unset in the input: min(2000, refreshMs). */
  timeoutMs: number;
}

export interface RoutingPolicy {
  gating: GatingPolicy;
  batching: BatchingPolicy;
  placement: PlacementWeights;
  loadSignals: LoadSignalsPolicy;
}

/**
 * Queries the chart's Prometheus serves. The router fills in `$pool`, the name it serves the pool under (the workers'
 * `pool` label), and `$namespace`, the pool's namespace as a regular expression (`.*` where the router cannot tell:
 * router-service signals/prometheus.ts expandQuery). Worker ids are pod names and a pool in the router's namespace
 * goes by its bare name, so two installs with same-named pools in one Prometheus differ only in the namespace the
 * scrape puts on the workers' series; `|` also takes series without one (a scrape config that adds no namespace).
 */
// Rows, as the router counts what it has in flight to a worker (its load score's unit); the batch count
// (switchyard_worker_queue_depth) would weigh a 2000-row batch like a 1-row one.
export const DEFAULT_QUEUE_DEPTH_QUERY =
  'sum by (worker) (switchyard_worker_queued_rows{pool="$pool", namespace=~"$namespace|"})';
export const DEFAULT_LATENCY_QUERY =
  'sum by (worker) (rate(switchyard_worker_run_duration_seconds_sum{pool="$pool", namespace=~"$namespace|"}[1m])) / sum by (worker) (rate(switchyard_worker_run_duration_seconds_count{pool="$pool", namespace=~"$namespace|"}[1m]))';

export function defaultRoutingPolicy(): RoutingPolicy {
  return {
    gating: { topK: null, topP: null, maxK: null, capacityFactor: null, overflow: "drop" },
    batching: { enabled: true, maxBatchTokens: 256, maxWaitMs: 2, maxQueueTokens: 65536, flushesInFlight: 2 },
    placement: { cacheAffinity: 1, load: 1, latency: 0.5 },
    loadSignals: {
      prometheusUrl: null,
      queries: { queueDepth: DEFAULT_QUEUE_DEPTH_QUERY, latencySeconds: DEFAULT_LATENCY_QUERY },
      refreshMs: 5000,
      stalenessMs: 30000,
      timeoutMs: 2000,
    },
  };
}
