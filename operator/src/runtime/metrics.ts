// Operator metrics under controller-runtime's and client-go's names, so existing dashboards and alerts for Go
// controllers work unchanged (docs/CONTRACTS.md "Operator").
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { QueueMetrics, WorkQueue } from "./queue.js";

// controller-runtime's reconcile-time buckets.
const RECONCILE_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75,
  2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60,
];
// client-go workqueue buckets: 1e-8 .. 10 s, factor 10.
const QUEUE_BUCKETS = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10];
/** The reconcile results Controller counts (controller-runtime also has "requeue", which nothing here returns). */
const RESULTS = ["success", "error", "requeue_after"] as const;

/** What the metrics read of one ExpertPool: its namespace and name, and its Ready condition. */
export interface PoolReadiness {
  namespace: string;
  name: string;
  /** The Ready condition's status: True, False, or Unknown (also where the pool has no Ready condition yet). */
  status: string;
  /** The Ready condition's reason; "" where it has none. */
  reason: string;
}

/** The shape of an ExpertPool that poolReadiness reads (structural, so tests need no full object). */
export interface PoolLike {
  metadata: { namespace?: string; name?: string };
  status?: { conditions?: ReadonlyArray<{ type: string; status: string; reason?: string }> };
}

export function poolReadiness(p: PoolLike): PoolReadiness {
  const cond = (type: string) => p.status?.conditions?.find((c) => c.type === type);
  const ready = cond("Ready");
  // A pool that cannot serve says only ExpertsUnavailable in Ready; what to do about it is in Degraded (a failure:
  // PodCreateFailed, InsufficientGPU, ...) or else Progressing (on its way: WaitingForReady, ScalingUp), so the
  // alert's summary names that reason.
  const why = [cond("Degraded"), cond("Progressing")].find((c) => c?.status === "True" && c.reason);
  return {
    namespace: p.metadata.namespace ?? "default",
    name: p.metadata.name ?? "",
    status: ready?.status ?? "Unknown",
    reason: (ready?.status !== "True" ? why?.reason : undefined) ?? ready?.reason ?? "",
  };
}

export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconcileTotal: Counter<"controller" | "result">;
  readonly reconcileErrors: Counter<"controller">;
  readonly reconcileTime: Histogram<"controller">;
  readonly activeWorkers: Gauge<"controller">;
  readonly maxConcurrent: Gauge<"controller">;
  readonly queueDepth: Gauge<"name" | "controller">;
  readonly queueAdds: Counter<"name" | "controller">;
  readonly queueRetries: Counter<"name" | "controller">;
  readonly queueDuration: Histogram<"name" | "controller">;
  readonly workDuration: Histogram<"name" | "controller">;
  readonly unfinished: Gauge<"name" | "controller">;
  readonly longest: Gauge<"name" | "controller">;
  readonly restRequests: Counter<"code" | "method" | "host">;
  readonly leader: Gauge<"name">;
  readonly pools: Gauge<"condition">;
  readonly poolReady: Gauge<"pool_namespace" | "pool" | "reason">;
  readonly routerConfigBytes: Gauge;
  readonly routerConfigPools: Gauge<"state">;
  readonly routerConfigLeftOut: Gauge<"pool_namespace" | "pool">;
  private queues: WorkQueue[] = [];
  /** Set by the manager: every ExpertPool's Ready condition (poolReadiness of its cache), read at scrape time. */
  poolStates: (() => PoolReadiness[]) | undefined;
  /**
   * Set by the manager: what the last router-config pass wrote, read at scrape time. leftOut: the pools ("namespace/
   * name") it had no room for.
   */
  routerConfig: (() => { bytes: number; served: number; leftOut: readonly string[] }) | undefined;

  constructor(defaultMetrics = true) {
    const r = [this.registry];
    this.reconcileTotal = new Counter({
      name: "controller_runtime_reconcile_total",
      help: "Total number of reconciliations per controller",
      labelNames: ["controller", "result"],
      registers: r,
    });
    this.reconcileErrors = new Counter({
      name: "controller_runtime_reconcile_errors_total",
      help: "Total number of reconciliation errors per controller",
      labelNames: ["controller"],
      registers: r,
    });
    this.reconcileTime = new Histogram({
      name: "controller_runtime_reconcile_time_seconds",
      help: "Length of time per reconciliation per controller",
      labelNames: ["controller"],
      buckets: RECONCILE_BUCKETS,
      registers: r,
    });
    this.activeWorkers = new Gauge({
      name: "controller_runtime_active_workers",
      help: "Number of currently used workers per controller",
      labelNames: ["controller"],
      registers: r,
    });
    this.maxConcurrent = new Gauge({
      name: "controller_runtime_max_concurrent_reconciles",
      help: "Maximum number of concurrent reconciles per controller",
      labelNames: ["controller"],
      registers: r,
    });
    const q = ["name", "controller"] as const;
    this.queueDepth = new Gauge({
      name: "workqueue_depth",
      help: "Current depth of workqueue",
      labelNames: q,
      registers: r,
    });
    this.queueAdds = new Counter({
      name: "workqueue_adds_total",
      help: "Total number of adds handled by workqueue",
      labelNames: q,
      registers: r,
    });
    this.queueRetries = new Counter({
      name: "workqueue_retries_total",
      help: "Total number of retries handled by workqueue",
      labelNames: q,
      registers: r,
    });
    this.queueDuration = new Histogram({
      name: "workqueue_queue_duration_seconds",
      help: "How long in seconds an item stays in workqueue before being requested",
      labelNames: q,
      buckets: QUEUE_BUCKETS,
      registers: r,
    });
    this.workDuration = new Histogram({
      name: "workqueue_work_duration_seconds",
      help: "How long in seconds processing an item from workqueue takes",
      labelNames: q,
      buckets: QUEUE_BUCKETS,
      registers: r,
    });
    this.unfinished = new Gauge({
      name: "workqueue_unfinished_work_seconds",
      help: "How many seconds of work has been done that is in progress and hasn't been observed by work_duration",
      labelNames: q,
      registers: r,
      collect: () => this.collectInFlight(),
    });
    this.longest = new Gauge({
      name: "workqueue_longest_running_processor_seconds",
      help: "How many seconds has the longest running processor for workqueue been running",
      labelNames: q,
      registers: r,
    });
    this.restRequests = new Counter({
      name: "rest_client_requests_total",
      help: "Number of HTTP requests, partitioned by status code, method, and host",
      labelNames: ["code", "method", "host"],
      registers: r,
    });
    this.leader = new Gauge({
      name: "leader_election_master_status",
      help: "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master",
      labelNames: ["name"],
      registers: r,
    });
    this.pools = new Gauge({
      name: "switchyard_operator_pools",
      help: "ExpertPools by the status of their Ready condition (True, False, Unknown)",
      labelNames: ["condition"],
      registers: r,
      collect: () => {
        const counts: Record<string, number> = { True: 0, False: 0, Unknown: 0 };
        for (const p of this.poolStates?.() ?? []) counts[p.status] = (counts[p.status] ?? 0) + 1;
        for (const [k, v] of Object.entries(counts)) this.pools.set({ condition: k }, v);
      },
    });
    // One series per pool, rebuilt at every scrape, so a deleted pool's goes with it and a pool whose reason changed
    // keeps one. `pool_namespace`, not `namespace`: the scrape's own target label `namespace` (the operator's) would
    // win over it (exported_namespace) unless the monitor honoured labels.
    this.poolReady = new Gauge({
      name: "switchyard_operator_pool_ready",
      help: "1 while an ExpertPool's Ready condition is True, else 0 (False, Unknown, none yet); reason is the condition's",
      labelNames: ["pool_namespace", "pool", "reason"],
      registers: r,
      collect: () => {
        this.poolReady.reset();
        for (const p of this.poolStates?.() ?? [])
          this.poolReady.set(
            { pool_namespace: p.namespace, pool: p.name, reason: p.reason },
            p.status === "True" ? 1 : 0,
          );
      },
    });
    this.routerConfigBytes = new Gauge({
      name: "switchyard_operator_router_config_bytes",
      help: "Size of the router config ConfigMap's values as the API server counts them (gzipped past 256 KiB); it refuses more than 1 MiB",
      registers: r,
      collect: () => {
        const c = this.routerConfig?.();
        if (c) this.routerConfigBytes.set(c.bytes);
      },
    });
    this.routerConfigPools = new Gauge({
      name: "switchyard_operator_router_config_pools",
      help: "ExpertPools with a published plan by whether the router config holds them (served) or had no room (left_out)",
      labelNames: ["state"],
      registers: r,
      collect: () => {
        const c = this.routerConfig?.();
        if (!c) return;
        this.routerConfigPools.set({ state: "served" }, c.served);
        this.routerConfigPools.set({ state: "left_out" }, c.leftOut.length);
      },
    });
    // Names the pools behind the count above, so an alert can say which (the standbys, which write no config, have none).
    this.routerConfigLeftOut = new Gauge({
      name: "switchyard_operator_router_config_left_out",
      help: "1 for each ExpertPool the router config had no room for (its ConfigMap full); no series for the others",
      labelNames: ["pool_namespace", "pool"],
      registers: r,
      collect: () => {
        this.routerConfigLeftOut.reset();
        for (const key of this.routerConfig?.().leftOut ?? []) {
          const i = key.indexOf("/");
          this.routerConfigLeftOut.set({ pool_namespace: key.slice(0, i), pool: key.slice(i + 1) }, 1);
        }
      },
    });
    if (defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  private collectInFlight(): void {
    for (const q of this.queues) {
      const { unfinishedSeconds, longestSeconds } = q.inFlight();
      this.unfinished.set({ name: q.name, controller: q.name }, unfinishedSeconds);
      this.longest.set({ name: q.name, controller: q.name }, longestSeconds);
    }
  }

  /**
   * A controller's series from its start, as controller-runtime's initMetrics does: a counter first exported at 1
   * makes rate() and increase() miss that first error (no earlier sample to count from), so a controller failing
   * once after each restart would never show in SwitchyardOperatorReconcileErrors.
   */
  initController(name: string, concurrency: number): void {
    const l = { controller: name };
    this.maxConcurrent.set(l, concurrency);
    this.activeWorkers.set(l, 0);
    this.reconcileErrors.inc(l, 0);
    for (const result of RESULTS) this.reconcileTotal.inc({ ...l, result }, 0);
  }

  queueMetrics(name: string): QueueMetrics {
    const l = { name, controller: name };
    return {
      depth: (n) => this.queueDepth.set(l, n),
      add: () => this.queueAdds.inc(l),
      retry: () => this.queueRetries.inc(l),
      queueDuration: (s) => this.queueDuration.observe(l, s),
      workDuration: (s) => this.workDuration.observe(l, s),
    };
  }

  trackQueue(q: WorkQueue): void {
    this.queues.push(q);
    this.queueDepth.set({ name: q.name, controller: q.name }, q.length);
  }
}
