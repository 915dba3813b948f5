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
  readonly routerConfigBytes: Gauge;
  readonly routerConfigPools: Gauge<"state">;
  private queues: WorkQueue[] = [];
  /** Set by the manager: pools per Ready status, read at scrape time. */
  poolCounts: (() => Record<string, number>) | undefined;
  /** Set by the manager: what the last router-config pass wrote, read at scrape time. */
  routerConfig: (() => { bytes: number; served: number; leftOut: number }) | undefined;

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
        for (const [k, v] of Object.entries(this.poolCounts?.() ?? {})) this.pools.set({ condition: k }, v);
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
        this.routerConfigPools.set({ state: "left_out" }, c.leftOut);
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
