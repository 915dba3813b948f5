// The Grafana dashboards shipped in charts/switchyard/dashboards/, built from one description so that every
// panel carries the datasource variable, uids stay stable and the layout cannot overlap. `npm run gen:dashboards`
// writes the JSON files; dashboards.test.ts fails when the committed files and this module disagree, and checks
// every query's metric names and labels against the registries of the router, worker and operator code.

/** Grafana's datasource reference for "whatever the `datasource` variable selects". */
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana variable syntax, not a JS template.
export const DS = { type: "prometheus", uid: "${datasource}" } as const;

export interface Target {
  expr: string;
  legendFormat?: string;
  /** Instant query (tables); range otherwise. */
  instant?: boolean;
}

export interface PanelSpec {
  title: string;
  description: string;
  type: "timeseries" | "heatmap" | "table" | "stat";
  targets: Target[];
  unit?: string;
  /** Grid width (of 24); height is fixed per row. */
  width?: number;
  height?: number;
  min?: number;
  max?: number;
  /** Extra, panel-type specific settings merged into the panel. */
  extra?: Record<string, unknown>;
}

export interface RowSpec {
  title: string;
  panels: PanelSpec[];
}

export interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
  file: string;
  tags: string[];
  /**
   * The release variable: the series selector whose `switchyard_release` label values (the chart's monitors put
   * `<release namespace>/<release name>` on every target) fill it. One release at a time: two installs sharing a
   * Prometheus may serve pools of one name, with workers of one name (pod names), and their operators share the
   * controller-runtime metric names with every other controller Prometheus scrapes.
   */
  release: string;
  /**
   * The pool variable: `from` is the metric whose `pool` label values (of the selected release) fill it; `multi` lets
   * it take several pools and "All". A dashboard whose panels sum series across pools (the heat by layer and expert)
   * must take one pool only: the experts of two models add up to nothing. null: no pool variable.
   */
  pool: { from: string; multi: boolean } | null;
  /** Auto-refresh interval; default 30s. */
  refresh?: string;
  rows: RowSpec[];
}

// Rate windows: Grafana's $__rate_interval adapts to the scrape interval (at least 4 scrapes).
const R = "$__rate_interval";
/** This release's targets (the chart's ServiceMonitors and PodMonitor add switchyard_release to every series). */
const RELEASE = 'switchyard_release=~"$release"';
/** The selected pools of the selected release. */
const POOL = `${RELEASE}, pool=~"$pool"`;
/**
 * The operator's own series: controller_runtime_*, workqueue_*, rest_client_* and leader_election_* are also the
 * names of kube-controller-manager's, cert-manager's and every other controller's metrics. The chart's operator
 * ServiceMonitor sets component="operator" and switchyard_release (as SwitchyardOperatorReconcileErrors reads them).
 */
const OPERATOR = `component="operator", ${RELEASE}`;
/**
 * What the pool pickers list: the router's plan version of each pool it serves, set when the pool loads (before any
 * traffic: a pool still warming up, or idle, is listed) and removed with the pool (RouterMetrics.forgetPool).
 */
const POOLS_FROM = "switchyard_router_placement_plan_version";

const q = (quantile: number, metric: string, by: string, sel = POOL) =>
  `histogram_quantile(${quantile}, sum by (${by}, le) (rate(${metric}_bucket{${sel}}[${R}])))`;

/** A histogram's mean per worker over the rate window. */
const meanOf = (metric: string) =>
  `sum by (pool, worker) (rate(${metric}_sum{${POOL}}[${R}])) / sum by (pool, worker) (rate(${metric}_count{${POOL}}[${R}]))`;

/**
 * Series only CUDA workers move (CPU workers export them empty, or at 0): their panels' queries may give NaN on a
 * CPU-only deployment (a GPU hit ratio is 0/0 there), as in the live test, which checks that they return series but
 * not that the values are finite.
 */
export const CUDA_ONLY_METRICS: readonly string[] = [
  "switchyard_worker_device_compute_duration_seconds",
  "switchyard_worker_gpu_cache_hits_total",
  "switchyard_worker_gpu_cache_misses_total",
  "switchyard_worker_gpu_cache_evictions_total",
  "switchyard_worker_gpu_cache_transfer_bytes_total",
  "switchyard_worker_gpu_cache_resident_experts",
  "switchyard_worker_gpu_cache_capacity_experts",
];

/** Per-worker token rate; the base of the balance panels. */
const workerRate = `sum by (pool, worker) (rate(switchyard_worker_tokens_total{${POOL}}[${R}]))`;
/** A per-worker counter's rate. */
const perWorker = (metric: string) => `sum by (pool, worker) (rate(${metric}{${POOL}}[${R}]))`;
/** Hits / (hits + misses) of a worker's cache tier. */
const hitRatio = (tier: "cache" | "gpu_cache") => {
  const [hits, misses] = [
    perWorker(`switchyard_worker_${tier}_hits_total`),
    perWorker(`switchyard_worker_${tier}_misses_total`),
  ];
  return `${hits} / (${hits} + ${misses})`;
};
/** How many experts the heat map over time shows: the hottest, not every (layer, expert) of a large model. */
const HEAT_TOP = 64;

export const DASHBOARDS: DashboardSpec[] = [
  {
    uid: "switchyard-experts",
    title: "Switchyard / Expert load",
    description:
      "Expert heat (layer x expert), worker balance, the workers' expert caches (host and GPU tiers) and batching per expert call, for one pool at a time.",
    file: "switchyard-experts.json",
    tags: ["switchyard", "moe", "experts"],
    // One pool: the heat panels add series by (layer, expert), which across pools would add different models'
    // experts together. A minute's refresh: the heat reads every (layer, expert) series of the pool.
    release: POOLS_FROM,
    pool: { from: POOLS_FROM, multi: false },
    refresh: "1m",
    rows: [
      {
        title: "Expert heat",
        panels: [
          {
            title: "Expert heat map: tokens/s per layer x expert",
            description:
              "Tokens routed to each (layer, expert) of the selected pool per second over the last 5 minutes, as the router replicas count them (summed over replicas); one row per layer, one column per expert. Hot columns are the experts that need redundant replicas.",
            type: "table",
            width: 24,
            height: 10,
            unit: "short",
            targets: [
              {
                expr: `sum by (layer, expert) (rate(switchyard_router_expert_tokens_total{${POOL}}[5m]))`,
                instant: true,
              },
            ],
            extra: {
              interval: "1m",
              transformations: [
                { id: "groupingToMatrix", options: { rowField: "layer", columnField: "expert", valueField: "Value" } },
                { id: "sortBy", options: { sort: [{ field: "layer\\expert" }] } },
              ],
              options: { showHeader: true, cellHeight: "sm" },
              fieldConfigCustom: { cellOptions: { type: "color-background", mode: "gradient" }, align: "center" },
              colorMode: "continuous-YlRd",
            },
          },
          {
            title: `Expert heat over time (hottest ${HEAT_TOP})`,
            description: `Tokens/s of the ${HEAT_TOP} hottest (layer, expert) pairs of the selected pool at each step, over time; each row is one layer/expert pair. The table above has every pair. One step a minute at least: the query reads every (layer, expert) series of the pool.`,
            type: "heatmap",
            width: 24,
            height: 10,
            unit: "short",
            targets: [
              {
                expr: `topk(${HEAT_TOP}, sum by (layer, expert) (rate(switchyard_router_expert_tokens_total{${POOL}}[${R}])))`,
                legendFormat: "L{{layer}} E{{expert}}",
              },
            ],
            extra: {
              interval: "1m",
              options: {
                calculate: false,
                cellGap: 1,
                color: { mode: "scheme", scheme: "Oranges", steps: 64, exponent: 0.5 },
                yAxis: { axisPlacement: "left" },
                rowsFrame: { layout: "unknown" },
                tooltip: { mode: "single", yHistogram: false },
                legend: { show: true },
              },
            },
          },
        ],
      },
      {
        title: "Worker balance",
        panels: [
          {
            title: "Max / mean worker load",
            description:
              "Busiest worker's token rate divided by the pool mean (1.0 = perfectly balanced; the placement goal is about 1.1).",
            type: "timeseries",
            unit: "none",
            min: 1,
            targets: [
              {
                expr: `max by (pool) (${workerRate}) / avg by (pool) (${workerRate})`,
                legendFormat: "{{pool}}",
              },
            ],
          },
          {
            title: "Tokens/s per worker",
            description: "Expert-token throughput of each worker.",
            type: "timeseries",
            unit: "short",
            targets: [{ expr: workerRate, legendFormat: "{{pool}} / {{worker}}" }],
          },
          {
            title: "Worker queue depth (waiting or running)",
            description:
              "Expert batches in each worker's queue, waiting or running (a CUDA worker runs up to SWITCHYARD_CUDA_RUNS_IN_FLIGHT at once, default 2; a CPU worker one). Past --queue-capacity waiting (default 64) the worker refuses batches with RESOURCE_EXHAUSTED.",
            type: "timeseries",
            unit: "short",
            targets: [
              { expr: `max by (pool, worker) (switchyard_worker_queue_depth{${POOL}})`, legendFormat: "{{worker}}" },
            ],
          },
          {
            title: "Worker batch time p99 (arrival to result)",
            description:
              "99th percentile of a batch's time on the worker from its arrival to its result: queue wait, expert loads (host cache misses) and compute together, not the compute alone. The panel beside splits it.",
            type: "timeseries",
            unit: "s",
            targets: [
              {
                expr: q(0.99, "switchyard_worker_run_duration_seconds", "pool, worker"),
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Worker time per batch: queued / backend / GPU (mean)",
            description:
              "Where a batch's time on the worker goes: waiting for the batches ahead of it (the worker is saturated) or in the backend (device transfers, kernels, the wait for them; with the CUDA backend's two runs in flight also the time behind the batch ahead on the GPU). GPU (CUDA workers only) is the device's own time for the batch's transfers and kernels, from events on its compute stream: backend minus GPU is the time queued behind another batch on the GPU and the host's staging and wait. Arrival to result minus queued and backend is the worker's own work: validation, expert lookups, encoding.",
            type: "timeseries",
            unit: "s",
            targets: [
              { expr: meanOf("switchyard_worker_queue_wait_seconds"), legendFormat: "{{worker}} queued" },
              { expr: meanOf("switchyard_worker_compute_duration_seconds"), legendFormat: "{{worker}} backend" },
              { expr: meanOf("switchyard_worker_device_compute_duration_seconds"), legendFormat: "{{worker}} GPU" },
              { expr: meanOf("switchyard_worker_run_duration_seconds"), legendFormat: "{{worker}} arrival to result" },
            ],
          },
          {
            title: "GPU stream busy (CUDA workers)",
            description:
              "Share of the time each CUDA worker's compute stream was running batches: the rate of the GPU's own time per batch (events on the stream; a batch's time starts when the stream reaches it, so two batches in flight do not overlap). Low while batches queue (the panels above) means the GPU waits for the host or the router; near 100% the GPU bounds the worker.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [
              {
                expr: `sum by (pool, worker) (rate(switchyard_worker_device_compute_duration_seconds_sum{${POOL}}[${R}]))`,
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Batches sharing a GPU run (CUDA workers)",
            description:
              "Share of each worker's batches that ran in one GPU run with other queued batches of their layer (SWITCHYARD_CUDA_MERGE_BATCHES): a run reads each expert's weights once, so batches that wait together, as from several routers, cost less together. 0 while batches find a free run slot; CPU workers never merge.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [
              {
                expr: `sum by (pool, worker) (rate(switchyard_worker_merged_batches_total{${POOL}}[${R}])) / sum by (pool, worker) (rate(switchyard_worker_batch_tokens_count{${POOL}}[${R}]))`,
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Worker event loop busy",
            description:
              "Share of the time each worker's JavaScript event loop was busy (validation, decoding, encoding, the CPU backend's calls). Near 100% the loop, not the backend, bounds the worker: its queue grows while the GPU waits.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [
              {
                expr: `max by (pool, worker) (rate(switchyard_worker_event_loop_busy_seconds_total{${POOL}}[${R}]))`,
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "GPUs per worker",
            description:
              "GPUs each worker runs its experts on: the pod's worker.gpusPerWorker, split among them (0 on CPU workers). With several, a batch's GPU time above is its busiest device's; on the H200s one worker over 2 GPUs was 1.14-1.43x as fast as two with one GPU each (expert-worker/README.md).",
            type: "timeseries",
            unit: "short",
            min: 0,
            targets: [
              { expr: `max by (pool, worker) (switchyard_worker_devices{${POOL}})`, legendFormat: "{{worker}}" },
            ],
          },
          {
            title: "Worker backend (cpu / cuda) and GPUs",
            description:
              "The compute backend each worker runs (switchyard_worker_backend_info) and its GPUs. A worker of a GPU pool on cpu fell back (--backend auto found no usable GPU: its log says why) and runs far slower.",
            type: "table",
            unit: "none",
            targets: [
              { expr: `max by (pool, worker, backend) (switchyard_worker_backend_info{${POOL}})`, instant: true },
              { expr: `max by (pool, worker) (switchyard_worker_devices{${POOL}})`, instant: true },
            ],
            extra: {
              transformations: [
                { id: "merge", options: {} },
                {
                  id: "organize",
                  options: {
                    excludeByName: { Time: true, "Value #A": true },
                    indexByName: { pool: 0, worker: 1, backend: 2, "Value #B": 3 },
                    renameByName: { "Value #B": "GPUs" },
                  },
                },
              ],
              options: { showHeader: true, cellHeight: "sm" },
            },
          },
        ],
      },
      {
        title: "Expert cache: host tier (checkpoint to host memory)",
        panels: [
          {
            title: "Host cache hit ratio per worker",
            description:
              "Fraction of expert lookups each worker served from its host residency cache (prepared experts in host memory: --host-cache-capacity of them on a CUDA worker, --cache-capacity on a CPU one; by default every expert the worker serves). A miss loads the expert from the checkpoint (disk or network). With the default capacity misses happen almost only while warming up. This is not the GPU: on CUDA workers the GPU tier's hit ratio is in the row below.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [{ expr: hitRatio("cache"), legendFormat: "{{pool}} / {{worker}}" }],
          },
          {
            title: "Host cache resident experts / capacity",
            description:
              "Experts resident in each worker's host residency cache against its capacity (--host-cache-capacity on a CUDA worker, --cache-capacity on a CPU one; by default the worker's share of the plan, re-sized when the plan changes).",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `max by (pool, worker) (switchyard_worker_cache_resident_experts{${POOL}})`,
                legendFormat: "{{worker}} resident",
              },
              {
                expr: `max by (pool, worker) (switchyard_worker_cache_capacity_experts{${POOL}})`,
                legendFormat: "{{worker}} capacity",
              },
            ],
          },
          {
            title: "Host cache evictions/s",
            description:
              "Experts removed from each worker's host residency cache per second: for room (capacity), by an Evict call, or because a new plan no longer serves them. Looked up again, one is read from the checkpoint again.",
            type: "timeseries",
            unit: "short",
            width: 8,
            targets: [
              { expr: perWorker("switchyard_worker_cache_evictions_total"), legendFormat: "{{worker}} evictions/s" },
            ],
          },
          {
            title: "Host cache loads: checkpoint bytes read/s",
            description:
              "Checkpoint bytes each worker reads per second to load experts into its host cache: warm-up, Prefetch calls and host cache misses. High outside warm-up and plan changes: the host cache is too small for the experts the worker serves.",
            type: "timeseries",
            unit: "Bps",
            width: 8,
            targets: [
              { expr: perWorker("switchyard_worker_cache_transfer_bytes_total"), legendFormat: "{{worker}} bytes/s" },
            ],
          },
          {
            title: "Warm-up: experts loaded / to load",
            description:
              "The start-up warm-up of each worker: experts loaded so far against those it loads before it reports ready (switchyard_worker_ready).",
            type: "timeseries",
            unit: "short",
            width: 8,
            targets: [
              {
                expr: `max by (pool, worker) (switchyard_worker_warmup_loaded_experts{${POOL}})`,
                legendFormat: "{{worker}} loaded",
              },
              {
                expr: `max by (pool, worker) (switchyard_worker_warmup_target_experts{${POOL}})`,
                legendFormat: "{{worker}} to load",
              },
            ],
          },
        ],
      },
      {
        // The CUDA backend's device slots over the host cache: where the capacity pressure of a GPU pool is.
        title: "Expert cache: GPU tier (CUDA workers)",
        panels: [
          {
            title: "GPU cache hit ratio per worker (CUDA workers)",
            description:
              "Fraction of the experts a batch needed that were already in one of the worker's GPU slots; a miss uploads the expert from the host cache to the GPU before the batch runs. The slots (SWITCHYARD_GPU_CACHE_SLOTS, else --cache-capacity, else what fits in 80% of device memory, at most 1024) are what limits a GPU pool. No value (0/0) on CPU workers.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [{ expr: hitRatio("gpu_cache"), legendFormat: "{{pool}} / {{worker}}" }],
          },
          {
            title: "GPU resident experts / slots (CUDA workers)",
            description:
              "Experts resident in each worker's GPU slots against its slots (all its GPUs together). Slots read 0 until the worker prepares its first expert, and on CPU workers.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `max by (pool, worker) (switchyard_worker_gpu_cache_resident_experts{${POOL}})`,
                legendFormat: "{{worker}} resident",
              },
              {
                expr: `max by (pool, worker) (switchyard_worker_gpu_cache_capacity_experts{${POOL}})`,
                legendFormat: "{{worker}} slots",
              },
            ],
          },
          {
            title: "GPU evictions/s (CUDA workers)",
            description:
              "Experts per second whose GPU slot was taken for another expert. Steady evictions with a low GPU hit ratio: the pool's hot experts do not fit in the slots (more GPU memory per worker, gpusPerWorker, or more workers).",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: perWorker("switchyard_worker_gpu_cache_evictions_total"),
                legendFormat: "{{worker}} evictions/s",
              },
            ],
          },
          {
            title: "Host to GPU upload bytes/s (CUDA workers)",
            description:
              "Bytes of expert weights each worker uploads from host to GPU per second: the GPU tier's misses and prefetches. Near the host-to-device bandwidth the uploads bound the worker.",
            type: "timeseries",
            unit: "Bps",
            targets: [
              {
                expr: perWorker("switchyard_worker_gpu_cache_transfer_bytes_total"),
                legendFormat: "{{worker}} bytes/s",
              },
            ],
          },
        ],
      },
      {
        title: "Batching",
        panels: [
          {
            title: "Tokens per expert call",
            description:
              "Tokens the router sends to one expert in one call (higher = better weight reuse on the GPU); mean and percentiles.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `sum by (pool) (rate(switchyard_router_tokens_per_expert_call_sum{${POOL}}[${R}])) / sum by (pool) (rate(switchyard_router_tokens_per_expert_call_count{${POOL}}[${R}]))`,
                legendFormat: "{{pool}} mean",
              },
              { expr: q(0.5, "switchyard_router_tokens_per_expert_call", "pool"), legendFormat: "{{pool}} p50" },
              { expr: q(0.9, "switchyard_router_tokens_per_expert_call", "pool"), legendFormat: "{{pool}} p90" },
            ],
          },
          {
            title: "Experts touched per batch",
            description: "Distinct experts in one router flush (mean).",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `sum by (pool) (rate(switchyard_router_experts_per_batch_sum{${POOL}}[${R}])) / sum by (pool) (rate(switchyard_router_experts_per_batch_count{${POOL}}[${R}]))`,
                legendFormat: "{{pool}}",
              },
            ],
          },
          {
            title: "Worker batch size p50 / p99",
            description: "Tokens per ExpertBatch as the workers receive them.",
            type: "timeseries",
            unit: "short",
            targets: [
              { expr: q(0.5, "switchyard_worker_batch_tokens", "pool"), legendFormat: "{{pool}} p50" },
              { expr: q(0.99, "switchyard_worker_batch_tokens", "pool"), legendFormat: "{{pool}} p99" },
            ],
          },
        ],
      },
    ],
  },
  {
    uid: "switchyard-router",
    title: "Switchyard / Router",
    description: "Router traffic, latency percentiles, queue wait, dispatch and drops, and the workers it sends to.",
    file: "switchyard-router.json",
    tags: ["switchyard", "moe", "router"],
    release: POOLS_FROM,
    pool: { from: POOLS_FROM, multi: true },
    rows: [
      {
        title: "Traffic",
        panels: [
          {
            title: "Requests/s by status",
            description: "Router calls per second by gRPC status code.",
            type: "timeseries",
            unit: "reqps",
            targets: [
              {
                expr: `sum by (pool, code) (rate(switchyard_router_requests_total{${POOL}}[${R}]))`,
                legendFormat: "{{pool}} {{code}}",
              },
            ],
          },
          {
            title: "Requests/s by method",
            description:
              "Router calls per second by how engines reach the router: Forward and ForwardStream on gRPC, ForwardData on its TCP data path (--data-port).",
            type: "timeseries",
            unit: "reqps",
            targets: [
              {
                expr: `sum by (pool, method) (rate(switchyard_router_requests_total{${POOL}}[${R}]))`,
                legendFormat: "{{pool}} {{method}}",
              },
            ],
          },
          {
            title: "Error ratio",
            description: "Fraction of router calls that did not end OK.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            targets: [
              {
                expr: `1 - (sum by (pool) (rate(switchyard_router_requests_total{${POOL}, code="OK"}[${R}])) or sum by (pool) (rate(switchyard_router_requests_total{${POOL}}[${R}])) * 0) / sum by (pool) (rate(switchyard_router_requests_total{${POOL}}[${R}]))`,
                legendFormat: "{{pool}}",
              },
            ],
          },
          {
            title: "Tokens/s",
            description: "Tokens through the router per second.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `sum by (pool) (rate(switchyard_router_tokens_total{${POOL}}[${R}]))`,
                legendFormat: "{{pool}}",
              },
            ],
          },
          {
            title: "Dropped expert assignments/s",
            description: "Token-to-expert assignments dropped by the capacity factor (overflow: drop).",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                // Zero, not "no data", for pools that never dropped (no series until the first drop).
                expr: `sum by (pool) (rate(switchyard_router_dropped_assignments_total{${POOL}}[${R}])) or sum by (pool) (rate(switchyard_router_tokens_total{${POOL}}[${R}])) * 0`,
                legendFormat: "{{pool}}",
              },
            ],
          },
          {
            title: "Admitted tokens per router replica (maxQueueTokens)",
            description:
              "Tokens each router replica (pod) counts against the pool's maxQueueTokens (RoutingPolicy spec.batching.maxQueueTokens): requests queued or in flight, and ended ones whose rows are still out in a batch another live request waits for. At maxQueueTokens the replica answers new requests RESOURCE_EXHAUSTED.",
            type: "timeseries",
            unit: "short",
            min: 0,
            targets: [
              {
                expr: `max by (pool, pod) (switchyard_router_admitted_tokens{${POOL}})`,
                legendFormat: "{{pool}} {{pod}}",
              },
            ],
          },
        ],
      },
      {
        title: "Latency",
        panels: [
          {
            title: "Request latency p50 / p90 / p99",
            description:
              "End-to-end latency inside the router of the requests it answered OK, every method (Forward, ForwardStream, ForwardData): gate, batch wait, dispatch, combine. Failed requests are not in it (Error ratio).",
            type: "timeseries",
            unit: "s",
            targets: [
              { expr: q(0.5, "switchyard_router_request_duration_seconds", "pool"), legendFormat: "{{pool}} p50" },
              { expr: q(0.9, "switchyard_router_request_duration_seconds", "pool"), legendFormat: "{{pool}} p90" },
              { expr: q(0.99, "switchyard_router_request_duration_seconds", "pool"), legendFormat: "{{pool}} p99" },
            ],
          },
          {
            title: "Batching queue wait p50 / p99",
            description: "Time tokens wait in the expert-aware batcher before their flush.",
            type: "timeseries",
            unit: "s",
            targets: [
              { expr: q(0.5, "switchyard_router_queue_wait_seconds", "pool"), legendFormat: "{{pool}} p50" },
              { expr: q(0.99, "switchyard_router_queue_wait_seconds", "pool"), legendFormat: "{{pool}} p99" },
            ],
          },
          {
            title: "Gate time per flush p50 / p99",
            description:
              "How long a flush waits for its hidden-state requests' gate (a gate product over their tokens, then top-k): the part not done while they waited in the batcher.",
            type: "timeseries",
            unit: "s",
            targets: [
              { expr: q(0.5, "switchyard_router_gate_duration_seconds", "pool"), legendFormat: "{{pool}} p50" },
              { expr: q(0.99, "switchyard_router_gate_duration_seconds", "pool"), legendFormat: "{{pool}} p99" },
            ],
          },
          {
            title: "Tokens gated while queued",
            description:
              "Share of the tokens whose gate product started while their request waited for its flush (SWITCHYARD_ROUTER_GATE_AHEAD); the rest are gated at the flush, or came with router logits or an assignment.",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [
              {
                expr: `sum by (pool) (rate(switchyard_router_gate_ahead_tokens_total{${POOL}}[${R}])) / sum by (pool) (rate(switchyard_router_tokens_total{${POOL}}[${R}]))`,
                legendFormat: "{{pool}}",
              },
            ],
          },
          {
            title: "Router event loop busy per replica",
            description:
              "Share of the time each router pod's JavaScript event loop was busy. Near 100% requests queue behind the loop whatever the batching settings: add router replicas (SwitchyardRouterSaturated).",
            type: "timeseries",
            unit: "percentunit",
            min: 0,
            max: 1,
            targets: [
              {
                expr: `rate(switchyard_router_event_loop_busy_seconds_total{${RELEASE}}[${R}])`,
                legendFormat: "{{pod}}",
              },
            ],
          },
          {
            title: "Dispatch latency p99 per worker",
            description: "Round trip of one ExpertBatch from router to worker.",
            type: "timeseries",
            unit: "s",
            targets: [
              {
                expr: q(0.99, "switchyard_router_dispatch_duration_seconds", "pool, worker"),
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Router batch tokens p50 / p99",
            description: "Tokens per router flush (all experts of one layer).",
            type: "timeseries",
            unit: "short",
            targets: [
              { expr: q(0.5, "switchyard_router_batch_tokens", "pool"), legendFormat: "{{pool}} p50" },
              { expr: q(0.99, "switchyard_router_batch_tokens", "pool"), legendFormat: "{{pool}} p99" },
            ],
          },
        ],
      },
      {
        title: "Workers: the router's view and their own",
        panels: [
          {
            title: "Dispatch errors/s per worker",
            description:
              "Failed ExpertBatch calls per worker, as the routers see them (zero for workers that never failed).",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                // The "or ... * 0" keeps a zero line for workers that have never failed (no error series yet).
                expr: `sum by (pool, worker) (rate(switchyard_router_dispatch_errors_total{${POOL}}[${R}])) or sum by (pool, worker) (rate(switchyard_router_dispatch_duration_seconds_count{${POOL}}[${R}])) * 0`,
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Worker RPC errors/s by method and code",
            description:
              "RPCs each worker answered with an error, per second, by method (RunExperts, RunExpertsStream, RunExpertsData on the TCP data path, Prefetch, Evict, Status; a stream's batches count one each) and gRPC status code: RESOURCE_EXHAUSTED when its queue is full, for example. CANCELLED is left out: the router gave the batch up (ExpertBatch.cancel once every request in it had ended, or a closed stream), no fault of the worker's. One zero line per worker until it fails.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                // The "or ... * 0" keeps a zero line per worker while no error series exists.
                expr: `sum by (pool, worker, method, code) (rate(switchyard_worker_requests_total{${POOL}, code!~"OK|CANCELLED"}[${R}])) or sum by (pool, worker) (rate(switchyard_worker_requests_total{${POOL}}[${R}])) * 0`,
                legendFormat: "{{worker}} {{method}} {{code}}",
              },
            ],
          },
          {
            title: "Rows per worker: router outstanding / worker queued",
            description:
              "Rows (token-expert assignments) sent to each worker and not yet answered, summed over the router replicas (the router's own load signal), beside the rows of the batches waiting or running in the worker's queue (switchyard_worker_queued_rows, the load signal RoutingPolicy reads from Prometheus by default). Outstanding above queued is in transit: on the wire, or answered and not yet read.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `sum by (pool, worker) (switchyard_router_worker_outstanding_tokens{${POOL}})`,
                legendFormat: "{{worker}} router outstanding",
              },
              {
                expr: `max by (pool, worker) (switchyard_worker_queued_rows{${POOL}})`,
                legendFormat: "{{worker}} worker queued",
              },
            ],
          },
          {
            title: "Workers on the TCP data path",
            description:
              "Per worker, the router replicas whose batches go over its TCP data path (the rest use the gRPC stream: see SwitchyardWorkerDataPathUnused).",
            type: "timeseries",
            unit: "short",
            min: 0,
            targets: [
              {
                expr: `sum by (pool, worker) (switchyard_router_worker_data_path{${POOL}})`,
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Tokens/s sent per worker",
            description: "Token rate the router sends to each worker.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `sum by (pool, worker) (rate(switchyard_router_worker_tokens_total{${POOL}}[${R}]))`,
                legendFormat: "{{worker}}",
              },
            ],
          },
          {
            title: "Load signals stale or off / placement plan version",
            description:
              "1 while the pool's Prometheus load signals are stale or off, and the router decides on its own counters (0: fresh). Off is the default: a RoutingPolicy without spec.loadSignals.prometheusUrl, so 1 alone is no fault; 'signals on' says which it is (1: the policy names a Prometheus, so stale is a fault, and the router's log says why: a wrong URL or query, Prometheus down). Beside them the placement plan version the router serves.",
            type: "stat",
            unit: "none",
            targets: [
              {
                expr: `max by (pool) (switchyard_router_load_signal_stale{${POOL}})`,
                legendFormat: "{{pool}} stale or off",
              },
              {
                expr: `max by (pool) (switchyard_router_load_signals_enabled{${POOL}})`,
                legendFormat: "{{pool}} signals on",
              },
              {
                expr: `max by (pool) (switchyard_router_placement_plan_version{${POOL}})`,
                legendFormat: "{{pool}} plan version",
              },
            ],
          },
        ],
      },
    ],
  },
  {
    uid: "switchyard-operator",
    title: "Switchyard / Operator",
    description:
      "Operator reconciles, errors, durations, work queue, API server requests and leadership (controller-runtime metric names), of the selected release's operator (component=\"operator\" and switchyard_release, as the chart's ServiceMonitor labels it).",
    file: "switchyard-operator.json",
    tags: ["switchyard", "operator"],
    release: `controller_runtime_reconcile_total{component="operator"}`,
    pool: null,
    rows: [
      {
        title: "Reconcile",
        panels: [
          {
            title: "Reconciles/s by result",
            description:
              "Reconcile passes per controller and result: success, error, or requeue_after (done, and to be looked at again later).",
            type: "timeseries",
            unit: "ops",
            targets: [
              {
                expr: `sum by (controller, result) (rate(controller_runtime_reconcile_total{${OPERATOR}}[${R}]))`,
                legendFormat: "{{controller}} {{result}}",
              },
            ],
          },
          {
            title: "Reconcile errors/s",
            description: "Failed reconcile passes per controller.",
            type: "timeseries",
            unit: "ops",
            targets: [
              {
                // Zero for controllers that never failed, whether or not the operator pre-creates the series.
                expr: `sum by (controller) (rate(controller_runtime_reconcile_errors_total{${OPERATOR}}[${R}])) or sum by (controller) (rate(controller_runtime_reconcile_total{${OPERATOR}}[${R}])) * 0`,
                legendFormat: "{{controller}}",
              },
            ],
          },
          {
            title: "Reconcile duration p50 / p99",
            description: "Time per reconcile pass.",
            type: "timeseries",
            unit: "s",
            targets: [
              {
                expr: q(0.5, "controller_runtime_reconcile_time_seconds", "controller", OPERATOR),
                legendFormat: "{{controller}} p50",
              },
              {
                expr: q(0.99, "controller_runtime_reconcile_time_seconds", "controller", OPERATOR),
                legendFormat: "{{controller}} p99",
              },
            ],
          },
          {
            title: "ExpertPools by condition",
            description:
              "Pools the operator counts in each condition (max over operator replicas: a standby counts the same pools).",
            type: "timeseries",
            unit: "short",
            targets: [
              { expr: `max by (condition) (switchyard_operator_pools{${OPERATOR}})`, legendFormat: "{{condition}}" },
            ],
          },
          {
            title: "Router config size",
            description:
              "The router ConfigMap's values as the API server counts them (gzipped past 256 KiB) against the 1 MiB it refuses past. Max over operator replicas: only the leader writes it.",
            type: "timeseries",
            unit: "bytes",
            targets: [
              { expr: `max(switchyard_operator_router_config_bytes{${OPERATOR}})`, legendFormat: "router config" },
              { expr: "vector(1048576)", legendFormat: "limit (1 MiB)" },
            ],
          },
          {
            title: "ExpertPools in the router config",
            description:
              "Pools with a published plan the router config holds, and those it had no room for: the routers do not serve them (Events RouterConfigFull name them; alert SwitchyardRouterConfigFull).",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `max by (state) (switchyard_operator_router_config_pools{${OPERATOR}})`,
                legendFormat: "{{state}}",
              },
            ],
          },
        ],
      },
      {
        title: "Work queue",
        panels: [
          {
            title: "Work queue depth",
            description: "Keys waiting to be reconciled; growth means the operator cannot keep up.",
            type: "timeseries",
            unit: "short",
            targets: [{ expr: `sum by (name) (workqueue_depth{${OPERATOR}})`, legendFormat: "{{name}}" }],
          },
          {
            title: "Work queue adds/s and retries/s",
            description: "Keys added to the queue, and rate-limited retries.",
            type: "timeseries",
            unit: "ops",
            targets: [
              { expr: `sum by (name) (rate(workqueue_adds_total{${OPERATOR}}[${R}]))`, legendFormat: "{{name}} adds" },
              {
                // Zero for queues that never retried (the series may appear only with the first retry).
                expr: `sum by (name) (rate(workqueue_retries_total{${OPERATOR}}[${R}])) or sum by (name) (rate(workqueue_adds_total{${OPERATOR}}[${R}])) * 0`,
                legendFormat: "{{name}} retries",
              },
            ],
          },
          {
            title: "Queue wait p99 / longest running / unfinished work",
            description:
              "How long keys wait before a worker picks them up, the longest reconcile in flight, and the seconds of all reconciles in flight together (growing while reconciles hang).",
            type: "timeseries",
            unit: "s",
            targets: [
              {
                expr: q(0.99, "workqueue_queue_duration_seconds", "name", OPERATOR),
                legendFormat: "{{name}} wait p99",
              },
              {
                expr: `max by (name) (workqueue_longest_running_processor_seconds{${OPERATOR}})`,
                legendFormat: "{{name}} longest running",
              },
              {
                expr: `max by (name) (workqueue_unfinished_work_seconds{${OPERATOR}})`,
                legendFormat: "{{name}} unfinished work",
              },
            ],
          },
          {
            title: "Reconciles in progress / allowed",
            description:
              "Reconciles running now per controller, against how many it runs at once (--concurrency). At the limit with a growing queue, the operator needs more concurrency or faster reconciles.",
            type: "timeseries",
            unit: "short",
            targets: [
              {
                expr: `sum by (controller) (controller_runtime_active_workers{${OPERATOR}})`,
                legendFormat: "{{controller}} running",
              },
              {
                expr: `max by (controller) (controller_runtime_max_concurrent_reconciles{${OPERATOR}})`,
                legendFormat: "{{controller}} allowed",
              },
            ],
          },
        ],
      },
      {
        title: "API server and leadership",
        panels: [
          {
            title: "API server requests/s by method and code",
            description:
              "Requests the operator makes to the Kubernetes API server per second, by HTTP method and status code. 409 (conflicts), 429 (throttled) and 5xx rising mean the operator's writes are not getting through.",
            type: "timeseries",
            unit: "reqps",
            targets: [
              {
                expr: `sum by (method, code) (rate(rest_client_requests_total{${OPERATOR}}[${R}]))`,
                legendFormat: "{{method}} {{code}}",
              },
            ],
          },
          {
            title: "Operator replicas leading",
            description:
              "Operator replicas that hold the leader lease, by lease name: 1 is right. 0 means no replica reconciles (pools are left as they are); no data when leader election is off.",
            type: "timeseries",
            unit: "short",
            min: 0,
            targets: [{ expr: `sum by (name) (leader_election_master_status{${OPERATOR}})`, legendFormat: "{{name}}" }],
          },
        ],
      },
    ],
  },
];

type Json = Record<string, unknown>;

/** Grafana's own datasource-typed variable, the release, and the pool filter where the dashboard has one. */
function templating(spec: DashboardSpec): Json {
  const list: Json[] = [
    {
      name: "datasource",
      label: "Data source",
      type: "datasource",
      query: "prometheus",
      current: {},
      hide: 0,
      refresh: 1,
      regex: "",
      includeAll: false,
      multi: false,
      options: [],
    },
  ];
  const release = `label_values(${spec.release}, switchyard_release)`;
  list.push({
    name: "release",
    label: "Release",
    description:
      "The Switchyard install (release namespace/name, the chart's switchyard_release label) whose series the panels show.",
    type: "query",
    datasource: DS,
    definition: release,
    query: { query: release, refId: "PrometheusVariableQueryEditor-VariableQuery" },
    current: {},
    hide: 0,
    includeAll: false,
    multi: false,
    refresh: 2,
    sort: 1,
    regex: "",
    options: [],
  });
  if (spec.pool) {
    const { from, multi } = spec.pool;
    const pools = `label_values(${from}{${RELEASE}}, pool)`;
    list.push({
      name: "pool",
      label: "Pool",
      type: "query",
      datasource: DS,
      definition: pools,
      query: { query: pools, refId: "PrometheusVariableQueryEditor-VariableQuery" },
      current: {},
      hide: 0,
      includeAll: multi,
      multi,
      ...(multi ? { allValue: ".*" } : {}),
      refresh: 2,
      sort: 1,
      regex: "",
      options: [],
    });
  }
  return { list };
}

function panelJson(p: PanelSpec, id: number, gridPos: Json): Json {
  const { fieldConfigCustom, colorMode, overrides, transformations, options, ...rest } = (p.extra ?? {}) as Json & {
    fieldConfigCustom?: Json;
    colorMode?: string;
    overrides?: Json[];
    transformations?: Json[];
    options?: Json;
  };
  const defaults: Json = { unit: p.unit ?? "short" };
  if (p.min !== undefined) defaults["min"] = p.min;
  if (p.max !== undefined) defaults["max"] = p.max;
  if (fieldConfigCustom) defaults["custom"] = fieldConfigCustom;
  if (colorMode) defaults["color"] = { mode: colorMode };
  const panel: Json = {
    id,
    type: p.type,
    title: p.title,
    description: p.description,
    datasource: DS,
    gridPos,
    targets: p.targets.map((t, i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: DS,
      expr: t.expr,
      legendFormat: t.legendFormat ?? "__auto",
      range: !t.instant,
      instant: !!t.instant,
      ...(t.instant ? { format: "table" } : {}),
    })),
    fieldConfig: { defaults, overrides: overrides ?? [] },
    options: options ?? defaultOptions(p.type),
  };
  if (transformations) panel["transformations"] = transformations;
  return { ...panel, ...rest };
}

function defaultOptions(type: PanelSpec["type"]): Json {
  if (type === "stat")
    return { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, textMode: "auto" };
  return { legend: { displayMode: "list", placement: "bottom", showLegend: true }, tooltip: { mode: "multi" } };
}

/** The dashboard JSON Grafana imports (schemaVersion 39, Grafana 10/11). */
export function buildDashboard(spec: DashboardSpec): Json {
  const panels: Json[] = [];
  let id = 1;
  let y = 0;
  for (const row of spec.rows) {
    panels.push({
      id: id++,
      type: "row",
      title: row.title,
      collapsed: false,
      gridPos: { h: 1, w: 24, x: 0, y },
      panels: [],
    });
    y += 1;
    let x = 0;
    let rowHeight = 0;
    for (const p of row.panels) {
      const w = p.width ?? 12;
      const h = p.height ?? 8;
      if (x + w > 24) {
        x = 0;
        y += rowHeight;
        rowHeight = 0;
      }
      panels.push(panelJson(p, id++, { h, w, x, y }));
      x += w;
      rowHeight = Math.max(rowHeight, h);
    }
    y += rowHeight;
  }
  return {
    uid: spec.uid,
    title: spec.title,
    description: spec.description,
    tags: spec.tags,
    editable: true,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    time: { from: "now-1h", to: "now" },
    refresh: spec.refresh ?? "30s",
    timezone: "",
    annotations: { list: [] },
    links: [
      {
        type: "dashboards",
        tags: ["switchyard"],
        asDropdown: true,
        title: "Switchyard",
        includeVars: true,
        keepTime: true,
      },
    ],
    templating: templating(spec),
    panels,
  };
}

/** file name -> pretty JSON text, exactly as committed. */
export function renderDashboards(): Map<string, string> {
  return new Map(DASHBOARDS.map((d) => [d.file, `${JSON.stringify(buildDashboard(d), null, 2)}\n`]));
}
