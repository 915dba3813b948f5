// startWorker: one expert worker (gRPC + metrics HTTP) in this process. main.ts calls it from the command line;
// tests and the router's local mode call it directly.

import { type Stats, unwatchFile, watchFile } from "node:fs";
import { readFile } from "node:fs/promises";
import {
  type Checkpoint,
  checkConfigAgainstTensors,
  expertReader,
  isMoeLayer,
  openCheckpoint,
  type PlacementPlan,
  sharedSlices,
  validatePlan,
} from "@switchyard/moe";
import { type BackendChoice, selectBackend } from "./backend/select.js";
import type { ExpertBackend } from "./backend/types.js";
import { type ExpertId, keyOf, makePolicy, parseKey, ResidencyCache } from "./cache.js";
import { checkCacheTiers, parseExpertSpec, servedFromPlan } from "./config.js";
import { type ExpertSource, servableExperts, WorkerCore, weightBytes } from "./core.js";
import { startDataServer } from "./data-server.js";
import { startHttpServer } from "./http.js";
import { WorkerMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { DEFAULT_MAX_MESSAGE_BYTES, startGrpcServer } from "./server.js";
import { type WarmResult, warmExperts, warmSummary } from "./warm.js";

export interface WorkerOptions {
  /** Checkpoint directory (config.json + safetensors), or an already open source. */
  checkpoint: string | ExpertSource;
  pool: string;
  /** The `pool` label of the metrics (config.ts, --metrics-pool); default: pool. */
  metricsPool?: string;
  workerId: string;
  /** 0 = any free port. */
  port?: number;
  metricsPort?: number;
  /** TCP data path beside gRPC (advertised in Status.data_port): 0 or absent = any free port, -1 = off. */
  dataPort?: number;
  host?: string;
  /** --experts SPEC (see config.ts). */
  experts?: string;
  /** Placement plan file; this worker serves what the plan gives its worker id (reloaded on change). */
  plan?: string;
  /** --cache-capacity: experts the compute tier holds (cacheTiers). */
  cacheCapacity?: number;
  /** --host-cache-capacity: experts the host tier holds, >= cacheCapacity (cacheTiers). */
  hostCacheCapacity?: number;
  cachePolicy?: string;
  backend?: BackendChoice | ExpertBackend;
  queueCapacity?: number;
  maxMessageBytes?: number;
  /** Largest batch (rows) accepted. */
  maxRows?: number;
  /**
   * Load the served experts (as many as the cache holds) before reporting ready; default true. Batches are answered
   * meanwhile, loading what they need as usual. A plan change warms the newly served experts in the background.
   */
  warm?: boolean;
  log?: (line: string) => void;
  /**
   * A fatal device error (ExpertBackend.onFatal): the worker has stopped serving (health NOT_SERVING, not ready) and
   * the process should exit non-zero so that it restarts (main.ts does). Default: only that.
   */
  onFatal?: (why: string) => void;
}

export interface WorkerHandle {
  port: number;
  /** Bound data-path port; 0 = off. */
  dataPort: number;
  metricsPort: number;
  backend: ExpertBackend;
  core: WorkerCore;
  metrics: WorkerMetrics;
  /**
   * Settles when the start-up warm-up is done (at once with warm: false, as `null`); the worker is ready from then
   * on. Rejects, naming the expert, when a served expert cannot be loaded: the worker stays not ready.
   */
  warmed: Promise<WarmResult | null>;
  close(): Promise<void>;
}

/** The placement plan in `file`, checked against the model; errors name --plan and the file. */
async function readPlan(file: string, source: ExpertSource): Promise<PlacementPlan> {
  try {
    return validatePlan(JSON.parse(await readFile(file, "utf8")), source);
  } catch (err) {
    // JSON.parse's bare "Unexpected token ..." says neither what was read nor where
    throw new Error(`--plan ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * `read` such that only the newest call counts: a call that settles after a newer one began answers "stale" (its
 * error too). Plan reloads overlap when the file changes again while a read is out; the older read finishing last
 * would otherwise install the older plan.
 */
export function newestOnly<T>(read: () => Promise<T>): () => Promise<{ value: T } | "stale"> {
  let calls = 0;
  return async () => {
    const n = ++calls;
    try {
      const value = await read();
      return n === calls ? { value } : "stale";
    } catch (err) {
      if (n !== calls) return "stale";
      throw err;
    }
  };
}

/** A checkpoint as an ExpertSource. */
export function checkpointSource(ckpt: Checkpoint): ExpertSource {
  const { spec } = ckpt;
  return {
    layers: spec.layers,
    experts: spec.experts,
    sharedSlices: sharedSlices(spec),
    hiddenSize: spec.hiddenSize,
    intermediateSize: spec.intermediateSize,
    isMoeLayer: (l) => isMoeLayer(spec, l),
    readExpert: expertReader(ckpt),
    close: () => ckpt.close(),
  };
}

/** How often the plan file is checked for a new version (a ConfigMap update takes the kubelet up to a minute anyway). */
const PLAN_POLL_MS = 500;

/** How long close() lets running batches and calls finish before it cuts them off. */
const SHUTDOWN_GRACE_MS = 2000;

/** The gRPC service name the readiness probe asks grpc.health.v1 about. */
export const WORKER_SERVICE = "switchyard.v1.ExpertWorker";

/**
 * Every expert id a source serves (no plan, no --experts), in layer then expert order; generated, not listed: the
 * warm-up takes only what its cache has room for (warmList), and layers × experts may be far more than that.
 */
function* allServable(source: ExpertSource): Generator<ExpertId> {
  const n = servableExperts(source);
  for (const layer of allMoeLayers(source)) for (let expert = 0; expert < n; expert++) yield { layer, expert };
}

function allMoeLayers(source: ExpertSource): number[] {
  const out: number[] = [];
  for (let l = 0; l < source.layers; l++) if (source.isMoeLayer(l)) out.push(l);
  return out;
}

/** How many experts each cache tier holds (cacheTiers). */
export interface CacheTiers {
  /** The host cache (ResidencyCache): what was read from the checkpoint and prepared. */
  host: number;
  /** GPU slots to ask the backend for; undefined = its default (what fits on the device), or no device tier. */
  device?: number;
  /** `host` is the served count: a new plan's share re-sizes it. */
  followsServed: boolean;
}

/**
 * The cache tiers' sizes for a worker serving `served` experts (docs: README "Cache tiers").
 * - With a device tier (CUDA): --cache-capacity is the GPU slots (unset: the backend's default, what fits on the
 *   device); --host-cache-capacity the host tier behind them, unset: every served expert, and never fewer than the
 *   GPU slots asked for (a host tier of 8 behind 16 slots would drop what the GPU runs).
 * - Without (CPU): the kernels compute from the host cache, the one tier: --cache-capacity, else
 *   --host-cache-capacity (a bound on host memory, which this tier is), else every served expert.
 */
export function cacheTiers(
  o: Pick<WorkerOptions, "cacheCapacity" | "hostCacheCapacity">,
  served: number,
  deviceTier: boolean,
): CacheTiers {
  checkCacheTiers(o.cacheCapacity, o.hostCacheCapacity);
  const all = Math.max(1, served);
  if (deviceTier) {
    return {
      host: o.hostCacheCapacity ?? Math.max(o.cacheCapacity ?? 1, all),
      device: o.cacheCapacity,
      followsServed: o.hostCacheCapacity === undefined,
    };
  }
  const host = o.cacheCapacity ?? o.hostCacheCapacity;
  return { host: host ?? all, followsServed: host === undefined };
}

export async function startWorker(o: WorkerOptions): Promise<WorkerHandle> {
  const log = o.log ?? ((line: string) => console.log(`[worker ${o.workerId}] ${line}`));
  let ownSource = false;
  let source: ExpertSource;
  if (typeof o.checkpoint === "string") {
    const ckpt = await openCheckpoint(o.checkpoint);
    try {
      // before anything is sized by the config's layers × experts: a wrong expert count fails here, named
      await checkConfigAgainstTensors(ckpt, { experts: true });
    } catch (err) {
      await ckpt.close();
      throw err;
    }
    source = checkpointSource(ckpt);
    ownSource = true;
  } else source = o.checkpoint;
  const cleanup: (() => Promise<void> | void)[] = [];
  try {
    const layers = allMoeLayers(source);
    let served: Set<string> | undefined;
    if (o.plan) served = servedFromPlan(await readPlan(o.plan, source), o.workerId, o.pool);
    else if (o.experts) served = parseExpertSpec(o.experts, layers, servableExperts(source));
    const servedCount = served ? served.size : layers.length * servableExperts(source);

    let backend: ExpertBackend;
    if (typeof o.backend === "object") {
      backend = o.backend;
      log(`backend: ${backend.describe()} (given)`);
    } else {
      const sel = await selectBackend(o.backend ?? "auto");
      backend = sel.backend;
      log(`backend: ${backend.name} — ${sel.reason}`);
    }

    const metrics = new WorkerMetrics({ pool: o.metricsPool ?? o.pool, worker: o.workerId });
    // A broken device fails every batch from now on: stop serving at once, so that the readiness probe takes this
    // worker out of its Service (the router already fails its batches over: they answer UNAVAILABLE), and let the
    // process exit to be restarted (o.onFatal).
    let ready = false;
    let closed = false;
    let closing: Promise<void> | undefined;
    let fatal = false;
    let stopServing: (() => void) | undefined; // set once the gRPC server is up
    backend.onFatal?.((why) => {
      if (fatal) return;
      fatal = true;
      log(`fatal device error, no longer serving: ${why}`);
      ready = false;
      metrics.ready.set(0);
      stopServing?.();
      o.onFatal?.(why);
    });
    metrics.backendInfo.set({ backend: backend.kind }, 1);
    metrics.devices.set(backend.kind === "cuda" ? (backend.deviceCount ?? 1) : 0);
    // The backend's own lines (CUDA: its rows per run, once its context is made) in the worker's log; its row limit
    // never above --max-rows.
    backend.setLog?.(log);
    if (o.maxRows !== undefined) backend.setMaxRunRows?.(o.maxRows);
    if (backend.maxRunRows) metrics.gpuRunRowLimit = backend.maxRunRows.bind(backend);
    // The GPU tier (CUDA) and the host tier behind it, or on CPU the one host tier (cacheTiers). The GPU tier's events
    // feed the switchyard_worker_gpu_cache_* series.
    const deviceTier = backend.setDeviceCacheCapacity !== undefined;
    const tiers = cacheTiers(o, servedCount, deviceTier);
    const capacity = tiers.host;
    if (tiers.device !== undefined) backend.setDeviceCacheCapacity?.(tiers.device);
    if (!deviceTier && o.cacheCapacity !== undefined && o.hostCacheCapacity !== undefined)
      log(
        `--host-cache-capacity ${o.hostCacheCapacity}: no tier behind this backend's; --cache-capacity sizes its cache`,
      );
    if (backend.addDeviceCacheSink)
      cleanup.push(backend.addDeviceCacheSink((kind, bytes) => metrics.gpuCacheEvent(kind, bytes)));
    if (backend.deviceCacheStats) {
      const stats = backend.deviceCacheStats.bind(backend);
      metrics.gpuCacheStats = stats;
    }
    metrics.cacheCapacity.set(capacity);
    metrics.cacheResident.set(0);
    metrics.queueDepth.set(0);
    const cache = new ResidencyCache({
      capacity,
      policy: makePolicy(o.cachePolicy ?? "lru"),
      load: async ({ layer, expert }) => {
        const w = await source.readExpert(layer, expert);
        return { prepared: await backend.prepare(w), sourceBytes: weightBytes(w) };
      },
      events: {
        hit: () => metrics.cacheLookup(true),
        miss: () => metrics.cacheLookup(false),
        evict: (_id, prepared) => {
          metrics.cacheEvictions.inc();
          // its device slot (CUDA) would otherwise hold it, and the slot, until the GPU tier's policy chose it
          backend.discard?.([prepared]);
        },
        // the batches that waited for it still run it; its device slot goes when they are done
        unkept: (_id, prepared) => backend.discard?.([prepared]),
        transfer: (b) => metrics.cacheTransferBytes.inc(b),
        resident: (n) => metrics.cacheResident.set(n),
      },
    });
    // one batch at a time through a CPU backend (it uses every core); the CUDA backend overlaps the next batch's
    // staging with the GPU's work on the one before (runsInFlight)
    const queue = new WorkQueue(o.queueCapacity ?? 64, backend.runsInFlight ?? 1, (d) => metrics.queueDepth.set(d));
    const core = new WorkerCore({
      pool: o.pool,
      workerId: o.workerId,
      source,
      backend,
      cache,
      queue,
      metrics,
      served,
      maxRows: o.maxRows,
    });

    // While the start-up warm-up runs, a plan change is taken up by it (readiness waits for the new plan's experts)
    // rather than by a second warm-up beside it.
    let warmingUp = o.warm !== false;
    if (o.plan) {
      // A mounted ConfigMap changes under us: re-read and swap the served set (bad plans are logged and ignored).
      // Polled by path, not fs.watch: a ConfigMap update swaps a symlink and an atomic write renames a new file over
      // the old one, and an inotify watch stays on the replaced inode, so it would see the first change only.
      const planFile = o.plan;
      const reload = newestOnly(() => readPlan(planFile, source));
      let timer: NodeJS.Timeout | undefined;
      const onStat = (cur: Stats, prev: Stats) => {
        if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size && cur.ino === prev.ino) return;
        clearTimeout(timer);
        timer = setTimeout(async () => {
          try {
            const read = await reload();
            // a newer change's read began meanwhile: it has the newer plan, whichever read finishes last
            if (read === "stale") return;
            const plan = read.value;
            const served = servedFromPlan(plan, o.workerId, o.pool);
            core.o.served = served;
            // What the plan took away can no longer be asked for: its slots go to what the plan brought.
            // Loads still out for them are not kept either (a start-up warm-up's, a batch's from before the change).
            const gone = cache.retain((id) => served.has(keyOf(id.layer, id.expert)));
            // A cache sized by the share follows it: a scale-down's larger share is all kept, a scale-up's smaller
            // one frees the memory (the pods are not restarted for it: the operator keeps replicas off their template).
            if (tiers.followsServed) {
              gone.push(...cache.resize(cacheTiers(o, served.size, deviceTier).host));
              metrics.cacheCapacity.set(cache.capacity);
            }
            log(
              `plan v${plan.version}: serving ${served.size} experts, cache ${cache.capacity} (${gone.length} no longer served left the cache)`,
            );
            if (o.warm !== false && !warmingUp) void warm(served, false).catch((err) => log((err as Error).message));
          } catch (err) {
            log(`plan reload failed, keeping the previous one: ${(err as Error).message}`);
          }
        }, 100);
      };
      watchFile(planFile, { interval: PLAN_POLL_MS, persistent: false }, onStat);
      cleanup.push(() => {
        clearTimeout(timer);
        unwatchFile(planFile, onStat);
      });
    }

    const grpc = await startGrpcServer(core, metrics, {
      host: o.host,
      port: o.port ?? 50061,
      maxMessageBytes: o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    });
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          grpc.server.tryShutdown(() => resolve());
          // In-flight streams would hold a graceful shutdown open; cut them after a short grace period.
          setTimeout(() => grpc.server.forceShutdown(), SHUTDOWN_GRACE_MS).unref();
        }),
    );
    let dataPort = 0;
    if ((o.dataPort ?? 0) >= 0) {
      const data = await startDataServer(core, metrics, {
        host: o.host,
        port: o.dataPort ?? 0,
        maxMessageBytes: o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
        log,
      });
      cleanup.push(() => data.close());
      dataPort = data.port;
      core.dataPort = dataPort;
    }
    // startUp: the warm-up readiness waits for, whose progress /metrics shows (a plan change's is not tracked)
    const warm = async (keys: Iterable<string> | undefined, startUp: boolean) => {
      const ids = keys ? [...keys].map(parseKey) : allServable(source);
      const r = await warmExperts({
        ids,
        cache,
        backend,
        serves: (id) => core.serves(id.layer, id.expert),
        stopped: () => closed,
        progress: startUp
          ? (loaded, target) => {
              metrics.warmupLoaded.set(loaded);
              metrics.warmupTarget.set(target);
            }
          : undefined,
      });
      log(warmSummary(r));
      return r;
    };
    const http = await startHttpServer({
      host: o.host,
      port: o.metricsPort ?? 9401,
      registry: metrics.registry,
      ready: () => ready,
    });
    cleanup.push(() => new Promise<void>((resolve) => http.server.close(() => resolve())));
    // "" answers the liveness and start-up probes (the process is up and bound); the service's own name answers the
    // readiness probe, SERVING once the served experts are loaded (Kubernetes publishes the pod's address then).
    grpc.health.setStatus("", "SERVING");
    stopServing = () => {
      grpc.health.setStatus("", "NOT_SERVING");
      grpc.health.setStatus(WORKER_SERVICE, "NOT_SERVING");
    };
    if (fatal) stopServing();
    log(
      `serving pool ${o.pool} on :${grpc.port} (data path :${dataPort || "off"}, metrics :${http.port}); ${servedCount} experts served, cache ${capacity}${tiers.device !== undefined ? `, GPU slots ${tiers.device}` : ""} (${cache.policy.name}), queue ${queue.capacity}`,
    );
    metrics.ready.set(0);
    metrics.warmupLoaded.set(0);
    metrics.warmupTarget.set(0);
    const warmStartUp = async (): Promise<WarmResult> => {
      const t0 = performance.now();
      let loaded = 0;
      let bytes = 0;
      try {
        for (;;) {
          const set = core.o.served;
          const r = await warm(set, true);
          loaded += r.loaded;
          bytes += r.bytes;
          // a new plan came while it ran: ready once what that plan serves is loaded too
          if (core.o.served === set || closed) return { ...r, loaded, bytes, seconds: (performance.now() - t0) / 1000 };
        }
      } finally {
        warmingUp = false;
      }
    };
    const warmed = (o.warm === false ? Promise.resolve(null) : warmStartUp()).then((r) => {
      if (!closed && !fatal) {
        ready = true;
        metrics.ready.set(1);
        grpc.health.setStatus(WORKER_SERVICE, "SERVING");
      }
      return r;
    });
    warmed.catch(() => {}); // the caller sees the rejection through `warmed`
    return {
      port: grpc.port,
      dataPort,
      metricsPort: http.port,
      backend,
      core,
      metrics,
      warmed,
      // One close, however many callers (a signal, a fatal error): each waits for the same drain.
      close: () => {
        closing ??= closeOnce();
        return closing;
      },
    };
    async function closeOnce(): Promise<void> {
      closed = true;
      ready = false;
      metrics.ready.set(0);
      grpc.health.setStatus("", "NOT_SERVING");
      grpc.health.setStatus(WORKER_SERVICE, "NOT_SERVING");
      // The batches already taken finish first: closing the data server drops its connections, which cancels what
      // runs on them (gRPC's tryShutdown below waits for its calls, with the same grace).
      const until = Date.now() + SHUTDOWN_GRACE_MS;
      while (queue.depth > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setImmediate(r)); // their replies are written before the sockets go
      for (const c of cleanup.reverse()) await c();
      await backend.close?.();
      if (ownSource) await source.close?.();
    }
  } catch (err) {
    for (const c of cleanup.reverse()) await c();
    if (ownSource) await source.close?.();
    throw err;
  }
}
