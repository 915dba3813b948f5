// Prometheus metrics of one worker (names fixed by docs/CONTRACTS.md; the chart's rules and dashboards use them).
// Each worker owns its Registry, so several workers can live in one process (local mode, tests).

import { eventLoopBusyCollector } from "@switchyard/moe";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** At most this many (layer, expert) label pairs; later pairs are counted under expert="other". */
export const MAX_EXPERT_SERIES = 4096;

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<"method" | "code">;
  readonly tokens: Counter;
  readonly expertTokens: Counter<"layer" | "expert">;
  readonly batchTokens: Histogram;
  readonly runDuration: Histogram;
  readonly queueWait: Histogram;
  readonly computeDuration: Histogram;
  readonly deviceComputeDuration: Histogram;
  readonly cacheHits: Counter;
  readonly cacheMisses: Counter;
  readonly cacheEvictions: Counter;
  readonly mergedBatches: Counter;
  readonly cacheTransferBytes: Counter;
  readonly cacheResident: Gauge;
  readonly cacheCapacity: Gauge;
  readonly gpuCacheHits: Counter;
  readonly gpuCacheMisses: Counter;
  readonly gpuCacheEvictions: Counter;
  readonly gpuCacheTransferBytes: Counter;
  readonly gpuCacheResident: Gauge;
  readonly gpuCacheCapacity: Gauge;
  readonly gpuMaxRunRows: Gauge;
  /** Where the GPU run row limit gauge reads from at scrape time (the backend's maxRunRows). */
  gpuRunRowLimit: () => number | undefined = () => undefined;
  /** Where the GPU resident/capacity gauges read from at scrape time (the backend's device-tier counters). */
  gpuCacheStats: () => { resident: number; capacity: number } | undefined = () => undefined;
  readonly queueDepth: Gauge;
  readonly queuedRows: Gauge;
  readonly backendInfo: Gauge<"backend">;
  readonly devices: Gauge;
  readonly ready: Gauge;
  readonly warmupLoaded: Gauge;
  readonly warmupTarget: Gauge;
  readonly eventLoopBusy: Counter;
  private readonly expertSeries = new Set<string>();
  // What the hot path counts between scrapes (per expert per batch: ~60,000 events a second on a busy CUDA worker,
  // where a prom-client inc each, a label hash and a map write, was a tenth of the JavaScript thread); each counter
  // takes its share when it is collected, as the router's heat does.
  private readonly pending = { hits: 0, misses: 0, gpuHits: 0, gpuMisses: 0, gpuEvictions: 0, gpuBytes: 0 };
  private readonly pendingExpertTokens = new Map<string, { layer: string; expert: string; n: number }>();

  private processMetricsOn = false;

  /**
   * Node's process metrics (process_* and nodejs_*: CPU, RSS, heap, GC, handles) in this registry, as the operator
   * has them. Once per process: main.ts calls it; tests and the local mode's in-process workers do not.
   */
  collectProcessMetrics(): void {
    if (this.processMetricsOn) return;
    this.processMetricsOn = true;
    collectDefaultMetrics({ register: this.registry });
  }

  constructor(labels: { pool: string; worker: string }) {
    this.registry.setDefaultLabels(labels);
    const registers = [this.registry];
    this.requests = new Counter({
      name: "switchyard_worker_requests_total",
      help: "RPCs handled, by method and gRPC status code name (stream batches count one each).",
      labelNames: ["method", "code"],
      registers,
    });
    this.tokens = new Counter({
      name: "switchyard_worker_tokens_total",
      help: "Token rows computed (sum of slice counts).",
      registers,
    });
    this.expertTokens = new Counter({
      name: "switchyard_worker_expert_tokens_total",
      help: `Token rows computed per (layer, expert); beyond ${MAX_EXPERT_SERIES} pairs counted as expert="other".`,
      labelNames: ["layer", "expert"],
      registers,
      collect: () => {
        for (const { layer, expert, n } of this.pendingExpertTokens.values())
          this.expertTokens.inc({ layer, expert }, n);
        this.pendingExpertTokens.clear();
      },
    });
    this.batchTokens = new Histogram({
      name: "switchyard_worker_batch_tokens",
      help: "Token rows per batch.",
      buckets: [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
      registers,
    });
    this.runDuration = new Histogram({
      name: "switchyard_worker_run_duration_seconds",
      help: "Time from a batch's arrival to its result (queue wait, expert loads and compute).",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    // The two parts of run_duration a slow worker is told apart by: batches waiting for the one running ahead of
    // them (the worker is saturated) or the backend's own time (the device or the cores are).
    this.queueWait = new Histogram({
      name: "switchyard_worker_queue_wait_seconds",
      help: "Time a batch waited in the worker's queue for the batches ahead of it.",
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    const computeBuckets = [
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
    ];
    this.computeDuration = new Histogram({
      name: "switchyard_worker_compute_duration_seconds",
      help: "Backend time of one batch: its experts' compute (on the GPU: transfers, kernels, the wait for them, and with two runs in flight the time behind the batch ahead on the GPU; switchyard_worker_device_compute_duration_seconds is the GPU's own figure), expert loads excluded.",
      buckets: computeBuckets,
      registers,
    });
    // The GPU's clock for the same batches (CPU workers export it empty), so the time a batch spent queued behind
    // another on the GPU shows as the gap between the two.
    this.deviceComputeDuration = new Histogram({
      name: "switchyard_worker_device_compute_duration_seconds",
      help: "GPU time of a batch's transfers and kernels, from events on the compute stream; excludes the time queued behind another batch on the GPU. Only CUDA workers observe it.",
      buckets: computeBuckets,
      registers,
    });
    const p = this.pending;
    this.cacheHits = new Counter({
      name: "switchyard_worker_cache_hits_total",
      help: "Expert lookups served from the residency cache.",
      registers,
      collect: takePending(p, "hits"),
    });
    this.cacheMisses = new Counter({
      name: "switchyard_worker_cache_misses_total",
      help: "Expert lookups that had to load from the checkpoint.",
      registers,
      collect: takePending(p, "misses"),
    });
    this.mergedBatches = new Counter({
      name: "switchyard_worker_merged_batches_total",
      help: "Batches that ran in one backend run with other queued batches of their layer (backends that merge: CUDA).",
      registers,
    });
    this.cacheEvictions = new Counter({
      name: "switchyard_worker_cache_evictions_total",
      help: "Experts removed from the residency cache (capacity or Evict).",
      registers,
    });
    this.cacheTransferBytes = new Counter({
      name: "switchyard_worker_cache_transfer_bytes_total",
      help: "Checkpoint bytes read to load experts.",
      registers,
    });
    this.cacheResident = new Gauge({
      name: "switchyard_worker_cache_resident_experts",
      help: "Experts resident in the cache.",
      registers,
    });
    this.cacheCapacity = new Gauge({
      name: "switchyard_worker_cache_capacity_experts",
      help: "Experts the cache holds at most.",
      registers,
    });
    // The GPU tier (CUDA backend): device slots over the host cache above. Always exported (0 on CPU workers), so
    // dashboards and rules need no per-backend variants.
    this.gpuCacheHits = new Counter({
      name: "switchyard_worker_gpu_cache_hits_total",
      help: "Experts a batch found already on the GPU (CUDA backend).",
      registers,
      collect: takePending(p, "gpuHits"),
    });
    this.gpuCacheMisses = new Counter({
      name: "switchyard_worker_gpu_cache_misses_total",
      help: "Experts a batch had to upload to the GPU before running (CUDA backend).",
      registers,
      collect: takePending(p, "gpuMisses"),
    });
    this.gpuCacheEvictions = new Counter({
      name: "switchyard_worker_gpu_cache_evictions_total",
      help: "Experts whose GPU slot was taken for another expert (CUDA backend).",
      registers,
      collect: takePending(p, "gpuEvictions"),
    });
    this.gpuCacheTransferBytes = new Counter({
      name: "switchyard_worker_gpu_cache_transfer_bytes_total",
      help: "Bytes uploaded host to GPU for expert weights, misses and prefetches (CUDA backend).",
      registers,
      collect: takePending(p, "gpuBytes"),
    });
    this.gpuCacheResident = new Gauge({
      name: "switchyard_worker_gpu_cache_resident_experts",
      help: "Experts resident in GPU slots (CUDA backend; 0 elsewhere).",
      registers,
      collect: () => this.setGpuCacheGauges(this.gpuCacheStats()),
    });
    this.gpuCacheCapacity = new Gauge({
      name: "switchyard_worker_gpu_cache_capacity_experts",
      help: "GPU expert slots (CUDA backend; 0 until the first expert is prepared, and on CPU workers).",
      registers,
      collect: () => this.setGpuCacheGauges(this.gpuCacheStats()),
    });
    this.gpuMaxRunRows = new Gauge({
      name: "switchyard_worker_gpu_max_run_rows",
      help: "Rows one GPU run holds at most, from the device memory left after the expert slots (or SWITCHYARD_GPU_MAX_ROWS), never above --max-rows; a batch with more runs in parts (CUDA backend; 0 until the first expert is prepared, and on CPU workers). Multi-GPU: the least of the devices'.",
      registers,
      collect: () => this.gpuMaxRunRows.set(this.gpuRunRowLimit() ?? 0),
    });
    this.queueDepth = new Gauge({
      name: "switchyard_worker_queue_depth",
      help: "Batches waiting or running.",
      registers,
    });
    // In the unit of the router's load score (rows it has sent and not had answered): its Prometheus load signal.
    this.queuedRows = new Gauge({
      name: "switchyard_worker_queued_rows",
      help: "Rows (token-expert assignments) of the batches waiting or running.",
      registers,
    });
    this.backendInfo = new Gauge({
      name: "switchyard_worker_backend_info",
      help: "The compute backend in use (value 1).",
      labelNames: ["backend"],
      registers,
    });
    this.devices = new Gauge({
      name: "switchyard_worker_devices",
      help: "GPUs the worker runs its experts on (worker.gpusPerWorker's; 0 on CPU).",
      registers,
    });
    // The warm-up (warm.ts): what the readiness probe waits for, visible while a large pool comes up.
    this.ready = new Gauge({
      name: "switchyard_worker_ready",
      help: "1 once the worker has loaded its served experts (or was started with --warm false); 0 while it warms up, after a failed warm-up, and while it shuts down.",
      registers,
    });
    this.warmupLoaded = new Gauge({
      name: "switchyard_worker_warmup_loaded_experts",
      help: "Experts the start-up warm-up has loaded so far.",
      registers,
    });
    this.warmupTarget = new Gauge({
      name: "switchyard_worker_warmup_target_experts",
      help: "Experts the start-up warm-up loads (the served ones the cache has room for; 0 with --warm false).",
      registers,
    });
    // the process's event loop (workers in one process each report the same loop)
    this.eventLoopBusy = new Counter({
      name: "switchyard_worker_event_loop_busy_seconds_total",
      help: "Seconds the worker's JavaScript event loop was busy; its rate is the loop's utilization (1 = saturated).",
      registers,
      collect: eventLoopBusyCollector(),
    });
  }

  /** Routes a backend's device-tier cache events (DeviceCacheSink) into the GPU series. */
  gpuCacheEvent(kind: "hit" | "miss" | "evict" | "transfer", bytes?: number): void {
    const p = this.pending;
    if (kind === "hit") p.gpuHits++;
    else if (kind === "miss") p.gpuMisses++;
    else if (kind === "evict") p.gpuEvictions++;
    else if (bytes) p.gpuBytes += bytes;
  }

  /** A lookup in the residency cache (the host tier): served from it, or loaded. */
  cacheLookup(hit: boolean): void {
    if (hit) this.pending.hits++;
    else this.pending.misses++;
  }

  /** Sets the GPU resident/capacity gauges from the backend's counters. */
  setGpuCacheGauges(s: { resident: number; capacity: number } | undefined): void {
    this.gpuCacheResident.set(s?.resident ?? 0);
    this.gpuCacheCapacity.set(s?.capacity ?? 0);
  }

  countExpertTokens(layer: number, expert: number, count: number): void {
    let key = `${layer}:${expert}`;
    let label = String(expert);
    if (!this.expertSeries.has(key)) {
      if (this.expertSeries.size >= MAX_EXPERT_SERIES) {
        key = `${layer}:other`;
        label = "other";
      } else this.expertSeries.add(key);
    }
    const p = this.pendingExpertTokens.get(key);
    if (p) p.n += count;
    else this.pendingExpertTokens.set(key, { layer: String(layer), expert: label, n: count });
  }
}

/** A Counter's collect(): adds what the hot path counted in pending[field] since the last scrape. */
function takePending<K extends string>(pending: Record<K, number>, field: K): (this: Counter) => void {
  return function (this: Counter) {
    const n = pending[field];
    if (n !== 0) {
      this.inc(n);
      pending[field] = 0;
    }
  };
}
