// Router metrics, names as in docs/CONTRACTS.md (the chart's rules and dashboards use exactly these).
// One Registry per Router instance, so tests and the local mode can run several routers in one process.

import { eventLoopBusyCollector } from "@switchyard/moe";
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { HotCounter, type HotCounterChild, HotHistogram, type HotHistogramChild } from "./hot-metrics.js";

/**
 * Heat series are bounded per pool: at most this many layer x expert series a pool, the rest fold into
 * expert="other". Sized for whole models: the operator's rebalance reads every (layer, expert), and DeepSeek-V3 alone
 * has 58 x 256 = 14,848 (4096 left two thirds of its heat unlabelled, and the operator now refuses to judge a plan on
 * folded heat). Per pool, not shared: with one bound for all, two large pools used it up and every later pool's heat
 * folded for good. forgetPool frees a removed pool's share.
 */
export const MAX_HEAT_SERIES = 32768;

/**
 * The `pool` label of switchyard_router_requests_total for requests naming a pool the router does not serve. Not a
 * Kubernetes object name (DNS-1123 has no "_"), so no ExpertPool can be served under it: a pool named "unknown" keeps
 * its own series, and the chart's alerts tell the two apart.
 */
export const UNKNOWN_POOL = "_unknown";

const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/**
 * A request's latency goes on up to its deadline (DEFAULT_DEADLINE_MS, 30 s, where the caller sets none): with 5 s
 * the top finite bucket, histogram_quantile could say no more than 5 s, and SwitchyardRouterLatencyHigh could never
 * fire at a threshold of 5 s or more. The chart's schema keeps that threshold below the top bucket.
 */
export const REQUEST_LATENCY_BUCKETS = [...LATENCY_BUCKETS, 10, 30];
const COUNT_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

export class RouterMetrics {
  readonly registry = new Registry();
  private processMetricsOn = false;

  /**
   * Node's process metrics (process_* and nodejs_*: CPU, RSS, heap, GC, handles) in this registry, as the operator
   * has them. Once per process: main.ts calls it; tests and the local mode, with several routers in one process, do not.
   */
  collectProcessMetrics(): void {
    if (this.processMetricsOn) return;
    this.processMetricsOn = true;
    collectDefaultMetrics({ register: this.registry });
  }

  readonly requests = new HotCounter(
    {
      name: "switchyard_router_requests_total",
      help: "Forward requests by method and gRPC status code name.",
      labelNames: ["pool", "method", "code"],
    },
    this.registry,
  );
  readonly tokens = new HotCounter(
    {
      name: "switchyard_router_tokens_total",
      help: "Tokens forwarded.",
      labelNames: ["pool"],
    },
    this.registry,
  );
  readonly requestDuration = new HotHistogram(
    {
      name: "switchyard_router_request_duration_seconds",
      help: "End-to-end latency inside the router of the requests answered OK (Forward, ForwardStream, ForwardData).",
      labelNames: ["pool"],
      buckets: REQUEST_LATENCY_BUCKETS,
    },
    this.registry,
  );
  readonly queueWait = new HotHistogram(
    {
      name: "switchyard_router_queue_wait_seconds",
      help: "Time a request waited in the batcher before its flush.",
      labelNames: ["pool"],
      buckets: LATENCY_BUCKETS,
    },
    this.registry,
  );
  readonly gateDuration = new HotHistogram(
    {
      name: "switchyard_router_gate_duration_seconds",
      help: "Gating of one flush's hidden-state requests: the gate product over all their tokens and their top-k.",
      labelNames: ["pool"],
      buckets: LATENCY_BUCKETS,
    },
    this.registry,
  );
  readonly gateAheadTokens = new Counter({
    name: "switchyard_router_gate_ahead_tokens_total",
    help: "Tokens whose gate product started while their request waited for its flush (the rest are gated at the flush).",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly expertsPerBatch = new HotHistogram(
    {
      name: "switchyard_router_experts_per_batch",
      help: "Distinct experts touched by one flush.",
      labelNames: ["pool"],
      buckets: COUNT_BUCKETS,
    },
    this.registry,
  );
  readonly tokensPerExpertCall = new HotHistogram(
    {
      name: "switchyard_router_tokens_per_expert_call",
      help: "Rows per expert slice sent to a worker.",
      labelNames: ["pool"],
      buckets: COUNT_BUCKETS,
    },
    this.registry,
  );
  readonly batchTokens = new HotHistogram(
    {
      name: "switchyard_router_batch_tokens",
      help: "Tokens in one flush (merged requests).",
      labelNames: ["pool"],
      buckets: COUNT_BUCKETS,
    },
    this.registry,
  );
  readonly dispatchDuration = new HotHistogram(
    {
      name: "switchyard_router_dispatch_duration_seconds",
      help: "Round trip of one ExpertBatch to a worker.",
      labelNames: ["pool", "worker"],
      buckets: LATENCY_BUCKETS,
    },
    this.registry,
  );
  readonly dispatchErrors = new Counter({
    name: "switchyard_router_dispatch_errors_total",
    help: "Failed ExpertBatch dispatches per worker.",
    labelNames: ["pool", "worker"],
    registers: [this.registry],
  });
  readonly workerTokens = new HotCounter(
    {
      name: "switchyard_router_worker_tokens_total",
      help: "Rows sent to each worker.",
      labelNames: ["pool", "worker"],
    },
    this.registry,
  );
  readonly workerOutstanding = new Gauge({
    name: "switchyard_router_worker_outstanding_tokens",
    help: "Rows sent to a worker and not yet answered.",
    labelNames: ["pool", "worker"],
    registers: [this.registry],
  });
  readonly workerDataPath = new Gauge({
    name: "switchyard_router_worker_data_path",
    help: "1 while batches to this worker go over its TCP data path, 0 while they take the gRPC stream.",
    labelNames: ["pool", "worker"],
    registers: [this.registry],
  });
  readonly expertTokens = new Counter({
    name: "switchyard_router_expert_tokens_total",
    help: "Expert heat: (token, expert) assignments per layer and expert, the shared expert's slices as ids from the routed experts' count on where the workers run them (bounded; overflow as expert=other).",
    labelNames: ["pool", "layer", "expert"],
    registers: [this.registry],
  });
  readonly dropped = new Counter({
    name: "switchyard_router_dropped_assignments_total",
    help: "(token, expert) assignments dropped by the capacity limit.",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly admittedTokens = new Gauge({
    name: "switchyard_router_admitted_tokens",
    help: "Tokens counted against the pool's maxQueueTokens: requests queued or in flight, and ended ones whose rows are still out on a worker. At maxQueueTokens new requests get RESOURCE_EXHAUSTED.",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly loadSignalStale = new Gauge({
    name: "switchyard_router_load_signal_stale",
    help: "1 while Prometheus load signals are stale or off and the router uses its own counters.",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly loadSignalsEnabled = new Gauge({
    name: "switchyard_router_load_signals_enabled",
    help: "1 where the pool's RoutingPolicy names a Prometheus for load signals (loadSignals.prometheusUrl), 0 where the router uses only its own counters by choice. Tells 'off' from 'stale' in switchyard_router_load_signal_stale.",
    labelNames: ["pool"],
    registers: [this.registry],
  });
  readonly planVersion = new Gauge({
    name: "switchyard_router_placement_plan_version",
    help: "Version of the placement plan in use.",
    labelNames: ["pool"],
    registers: [this.registry],
  });

  /** The process's event loop (one per router process: replicas in one process each report the same loop). */
  readonly eventLoopBusy = new Counter({
    name: "switchyard_router_event_loop_busy_seconds_total",
    help: "Seconds the router's JavaScript event loop was busy; its rate is the loop's utilization, 1 = saturated (add router replicas).",
    registers: [this.registry],
    collect: eventLoopBusyCollector(),
  });

  /** Per pool, the heat series it exports: labelled ones as "layer/expert", and the layers with an expert="other". */
  private readonly heatSeries = new Map<string, { labelled: Set<string>; folded: Set<number> }>();
  private readonly pools = new Map<string, PoolMetrics>();

  /** Label-bound children for one pool (the hot path never builds label keys). */
  forPool(pool: string): PoolMetrics {
    let m = this.pools.get(pool);
    if (!m) {
      m = new PoolMetrics(this, pool);
      this.pools.set(pool, m);
    }
    return m;
  }

  /** Adds heat for (layer, expert), folding into expert="other" past the pool's MAX_HEAT_SERIES distinct series. */
  heat(pool: string, layer: number, expert: number, n: number): void {
    let series = this.heatSeries.get(pool);
    if (!series) {
      series = { labelled: new Set(), folded: new Set() };
      this.heatSeries.set(pool, series);
    }
    const key = `${layer}/${expert}`;
    let e = String(expert);
    if (!series.labelled.has(key)) {
      if (series.labelled.size >= MAX_HEAT_SERIES) {
        e = "other";
        series.folded.add(layer);
      } else series.labelled.add(key);
    }
    this.expertTokens.inc({ pool, layer: String(layer), expert: e }, n);
  }

  /**
   * Forgets a removed pool: its heat series (and their share of the bound), its label-bound children and every
   * series labelled with it, so that the pool stops exporting. A pool of that name added later starts afresh. The
   * PoolMetrics handed out for it are detached: what a flush still in flight counts there is exported nowhere.
   * Not switchyard_router_requests_total: reply.ts caches its children per pool, and a request's count is the
   * caller's record of what it asked for (an unknown pool's requests count under pool="_unknown" anyway).
   */
  /**
   * Drops a worker's series when the pool's plan no longer names it: its gauges would otherwise export their last
   * values for good (a ghost worker on the dashboards), and workers scaled up and down would add series without end.
   */
  forgetWorker(pool: string, worker: string): void {
    if (this.pools.get(pool)?.forgetWorker(worker)) this.removeWorkerSeries(pool, worker);
  }

  private removeWorkerSeries(pool: string, worker: string): void {
    const l = { pool, worker };
    this.dispatchErrors.remove(l);
    this.workerOutstanding.remove(l);
    this.workerDataPath.remove(l);
    this.workerTokens.remove(l);
    this.dispatchDuration.remove(l);
  }

  forgetPool(pool: string): void {
    const series = this.heatSeries.get(pool);
    if (series) {
      for (const key of series.labelled) {
        const [layer, expert] = key.split("/");
        this.expertTokens.remove({ pool, layer, expert });
      }
      for (const layer of series.folded) this.expertTokens.remove({ pool, layer: String(layer), expert: "other" });
      this.heatSeries.delete(pool);
    }
    const p = this.pools.get(pool);
    if (p) {
      p.detach();
      for (const w of p.workerIds()) this.removeWorkerSeries(pool, w);
      this.pools.delete(pool);
    }
    const l = { pool };
    for (const h of [
      this.tokens,
      this.requestDuration,
      this.queueWait,
      this.gateDuration,
      this.batchTokens,
      this.expertsPerBatch,
      this.tokensPerExpertCall,
    ])
      h.remove(l);
    for (const c of [
      this.gateAheadTokens,
      this.dropped,
      this.admittedTokens,
      this.loadSignalStale,
      this.loadSignalsEnabled,
      this.planVersion,
    ])
      c.remove(l);
  }
}

export class PoolMetrics {
  readonly tokens;
  readonly requestDuration;
  readonly queueWait;
  readonly gateDuration;
  /** prom-client children (not hot ones): detach() swaps them for no-ops. */
  gateAheadTokens: Counter.Internal;
  readonly batchTokens;
  dropped: Counter.Internal;
  readonly expertsPerBatch;
  readonly tokensPerExpertCall;
  private readonly workers = new Map<string, WorkerMetricsChildren>();
  /** Cleared by RouterMetrics.forgetPool: heat added after that goes nowhere. */
  private live = true;
  /** Heat accumulated per layer between scrapes (an increment per expert per flush would cost more than routing). */
  private readonly heat = new Map<number, Float64Array>();

  constructor(
    private readonly m: RouterMetrics,
    readonly pool: string,
  ) {
    const l = { pool };
    this.tokens = m.tokens.labels(l);
    this.requestDuration = m.requestDuration.labels(l);
    this.queueWait = m.queueWait.labels(l);
    this.gateDuration = m.gateDuration.labels(l);
    this.gateAheadTokens = m.gateAheadTokens.labels(l);
    // A series from the start (0 where the gate never runs ahead: gates a token's product keeps on the event loop, or SWITCHYARD_ROUTER_GATE_AHEAD=off),
    // so the dashboard's share reads 0 rather than no data.
    this.gateAheadTokens.inc(0);
    this.batchTokens = m.batchTokens.labels(l);
    this.dropped = m.dropped.labels(l);
    this.expertsPerBatch = m.expertsPerBatch.labels(l);
    this.tokensPerExpertCall = m.tokensPerExpertCall.labels(l);
  }

  worker(id: string): WorkerMetricsChildren {
    let w = this.workers.get(id);
    if (!w) {
      const l = { pool: this.pool, worker: id };
      w = {
        tokens: this.m.workerTokens.labels(l),
        dispatch: this.m.dispatchDuration.labels(l),
        errors: this.m.dispatchErrors.labels(l),
        outstanding: this.m.workerOutstanding.labels(l),
        dataPath: this.m.workerDataPath.labels(l),
      };
      // At 0 from the start: a counter first exported at 1 makes rate() miss that first failure (no earlier sample).
      // (Not for a pool forgotten meanwhile: that would put a series back.)
      if (this.live) w.errors.inc(0);
      this.workers.set(id, w);
    }
    return w;
  }

  /** Forgets a worker's children (RouterMetrics.forgetWorker removes the series); whether it had any. */
  forgetWorker(id: string): boolean {
    return this.workers.delete(id);
  }

  /** The workers this pool has children for (forgetPool removes their series). */
  workerIds(): string[] {
    return [...this.workers.keys()];
  }

  /**
   * Cut off from the registry (the pool was forgotten): prom-client's label-bound counters would put a series back on
   * their next inc, so those become no-ops; flushHeat exports nothing.
   */
  detach(): void {
    this.live = false;
    const none = { inc: () => {} };
    this.gateAheadTokens = none;
    this.dropped = none;
    for (const w of this.workers.values()) w.errors = none;
    this.heat.clear();
  }

  addHeat(layer: number, experts: number, expert: number, n: number): void {
    let h = this.heat.get(layer);
    if (!h || h.length < experts) {
      // first use, or a model with more experts (a config reload): a typed array drops writes past its end
      const grown = new Float64Array(experts);
      if (h) grown.set(h);
      h = grown;
      this.heat.set(layer, h);
    }
    h[expert] += n;
  }

  /** Moves accumulated heat into the counter (called at scrape time). */
  flushHeat(): void {
    if (!this.live) return;
    for (const [layer, h] of this.heat) {
      for (let e = 0; e < h.length; e++) {
        if (h[e] > 0) {
          this.m.heat(this.pool, layer, e, h[e]);
          h[e] = 0;
        }
      }
    }
  }
}

export interface WorkerMetricsChildren {
  tokens: HotCounterChild;
  dispatch: HotHistogramChild;
  errors: Counter.Internal;
  outstanding: ReturnType<Gauge["labels"]>;
  dataPath: ReturnType<Gauge["labels"]>;
}
