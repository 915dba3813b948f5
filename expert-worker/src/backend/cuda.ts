// CUDA backend: the sy_moe kernels (expert-worker/native/cuda) through the switchyard_cuda N-API module.
//
// prepare() keeps the expert on the host (the worker's ResidencyCache is the host tier); run() makes the batch's
// experts resident in the GPU expert cache (GpuSlotCache: device slots, LRU, uploads on a copy stream that overlap
// compute), then runs the grouped FFN on the backend's compute stream. Every CUDA call happens on libuv worker
// threads inside the addon: the event loop never waits on the GPU.
//
// Slots: SWITCHYARD_GPU_CACHE_SLOTS, else the worker's --cache-capacity (setDeviceCacheCapacity), else env
// SWITCHYARD_CACHE_CAPACITY (the pool's cache setting), else as many experts as fit in 80% of device memory; at
// most 1024. Cache events go to the constructor's callback and to every addDeviceCacheSink() subscriber (the
// worker's /metrics), and to the process-wide setGpuCacheEventSink() for backends made by probeCudaBackend().
//
// Rows: once the context has taken the slots, the memory left bounds the rows of a run (run-rows.ts: the run buffers
// per row, the headroom, SWITCHYARD_GPU_MAX_ROWS, the worker's --max-rows); a batch with more rows runs in parts, as
// one with more experts than slots does. One log line says the limit and how it was reached.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { protoDType } from "@switchyard/moe";
import { dtypeSize, resourceExhausted, type SwitchyardError, unavailable } from "@switchyard/protocol";
import { makePolicy } from "../cache.js";
import { abortError } from "../queue.js";
import { gatherRows, sumRowsByToken } from "../token-rows.js";
import { type GpuCacheStats, GpuSlotCache } from "./cuda-cache.js";
import { chunkShare, type DeviceShare, MultiDeviceBackend, runShares } from "./multi-device.js";
import { loadNativeAddon, type NativeWeight } from "./native-cpu.js";
import { describeRowLimit, gpuMaxRows, type RunRowLimit, runRowLimit } from "./run-rows.js";
import {
  checkExpertWeights,
  type DeviceCacheEvent,
  type DeviceCacheSink,
  type ExpertBackend,
  type ExpertWeights,
  type PreparedExpert,
  type RunRequest,
  refuseResizable,
  type WeightMatrix,
} from "./types.js";

export interface CudaProbeInfo {
  ok: boolean;
  error?: string;
  name: string;
  sms: number;
  totalMem: number;
  /** Device 0's free memory at the probe (an addon built before this field says nothing). */
  freeMem?: number;
  cc: string;
  /** Visible devices (an addon built before this field says nothing: one). */
  devices?: number;
}

/**
 * A run's result as the addon resolves it: the output bytes, with `deviceMs` (non-enumerable) the GPU's milliseconds
 * for the run, from timing events on the compute stream around its copy up, kernels and copy down. An addon built
 * before the events has none.
 */
export type CudaRunResult = Uint8Array & { readonly deviceMs?: number };

/** The addon's raw surface (native/cuda/addon_cuda.cc). */
export interface CudaAddon {
  probe(): CudaProbeInfo;
  createContext(o: { d: number; f: number; slots: number; device?: number; runsInFlight?: number }): object;
  upload(ctx: object, slot: number, gate: NativeWeight, up: NativeWeight, down: NativeWeight): Promise<number>;
  run(
    ctx: object,
    o: {
      dtype: number;
      tokens: Uint8Array;
      rows: number;
      cols: number;
      rowSlots: Int32Array;
      rowWeights?: Float32Array;
      tokenRows?: Uint32Array;
      sumByToken?: boolean;
    },
  ): Promise<CudaRunResult>;
  stats(ctx: object): {
    runs: number;
    uploads: number;
    uploadBytes: number;
    deviceBytes: number;
    slots: number;
    /** Device bytes of the run buffer sets no run holds now (an addon built before it has none). */
    runBufferBytes?: number;
  };
  /** The context's device's free and total memory now (cudaMemGetInfo); an addon built before it has none. */
  memInfo?(ctx: object): { free: number; total: number };
  /** Tests only: a real fault (illegal address) on the context's device; returns the stream's error. */
  _faultForTests?(ctx: object): string;
}

/**
 * An addon rejection as the worker answers it: `code` "CUDA_FATAL" (the device's context is broken for the rest of
 * the process) is UNAVAILABLE, "CUDA_OOM" (device or pinned memory) RESOURCE_EXHAUSTED, so that the router sends the
 * rows to another replica rather than fail the requests; anything else as it came (INTERNAL). `what` says which
 * call on which device.
 */
export function cudaFailure(err: unknown, what: string): { error: unknown; fatal: boolean } {
  const code = (err as { code?: unknown } | null)?.code;
  const message = `${what}: ${err instanceof Error ? err.message : String(err)}`;
  if (code === "CUDA_FATAL") return { error: unavailable(message), fatal: true };
  if (code === "CUDA_OOM") return { error: resourceExhausted(message), fatal: false };
  return { error: err, fatal: false };
}

const here = dirname(fileURLToPath(import.meta.url));
export const CUDA_ADDON_PATH = resolve(here, "../../build/switchyard_cuda.node");

export function loadCudaAddon(path = CUDA_ADDON_PATH): CudaAddon | { unavailable: string } {
  if (!existsSync(path)) return { unavailable: `CUDA addon not built (${path}; needs nvcc at build time)` };
  try {
    return createRequire(import.meta.url)(path) as CudaAddon;
  } catch (err) {
    return { unavailable: `CUDA addon failed to load: ${err instanceof Error ? err.message : String(err)}` };
  }
}

let nextKey = 0;

export class CudaPrepared implements PreparedExpert {
  readonly cacheKey = `cuda-expert-${nextKey++}`;
  constructor(
    readonly hiddenSize: number,
    readonly intermediateSize: number,
    /** Device bytes of one slot (bf16 gate, up, down). */
    readonly bytes: number,
    readonly gate: NativeWeight,
    readonly up: NativeWeight,
    readonly down: NativeWeight,
  ) {}
}

/**
 * Slot count: SWITCHYARD_GPU_CACHE_SLOTS (explicit GPU override), else `requested` (the worker's --cache-capacity),
 * else SWITCHYARD_CACHE_CAPACITY, else what fits in 80% of device memory, and in what is free less the 20% the runs'
 * buffers keep (`freeMem`: another process or worker on the GPU has the rest); at most 1024.
 */
export function slotCount(
  env: NodeJS.ProcessEnv,
  totalMem: number,
  expertBytes: number,
  requested?: number,
  freeMem?: number,
): number {
  const fromEnv = (name: string): number | undefined => {
    const v = env[name];
    if (v === undefined || v === "") return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}: expected an integer >= 1, got "${v}"`);
    return n;
  };
  const n = fromEnv("SWITCHYARD_GPU_CACHE_SLOTS") ?? requested ?? fromEnv("SWITCHYARD_CACHE_CAPACITY");
  if (n !== undefined) return Math.min(n, 1024);
  const budget = Math.min(0.8 * totalMem, freeMem === undefined ? Number.POSITIVE_INFINITY : freeMem - 0.2 * totalMem);
  return Math.max(1, Math.min(1024, Math.floor(budget / expertBytes)));
}

/**
 * SWITCHYARD_CUDA_RUNS_IN_FLIGHT: 1 to 3, default 2 (1 runs one batch at a time, as before; for A/B). Each run waits
 * for the GPU on one of libuv's 4 pool threads; at least one must stay free for the expert uploads and checkpoint
 * reads, or they would queue behind the runs they are meant to overlap.
 */
export function runsInFlight(env: NodeJS.ProcessEnv): number {
  const v = env.SWITCHYARD_CUDA_RUNS_IN_FLIGHT;
  if (v === undefined || v === "") return 2;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 3)
    throw new Error(`SWITCHYARD_CUDA_RUNS_IN_FLIGHT: expected an integer in [1, 3], got "${v}"`);
  return n;
}

/**
 * SWITCHYARD_CUDA_MERGE_BATCHES: on (default) or off. On, batches of one layer that wait together run as one: a run
 * reads each of its experts' weights from HBM once, so at DeepSeek-V3's size (a batch's time is its experts' weights,
 * bench/results/h200-moe.md) two batches cost far less together than apart. Off for A/B.
 */
export function mergeBatches(env: NodeJS.ProcessEnv): boolean {
  const v = env.SWITCHYARD_CUDA_MERGE_BATCHES;
  if (v === undefined || v === "" || v === "on") return true;
  if (v === "off") return false;
  throw new Error(`SWITCHYARD_CUDA_MERGE_BATCHES: expected on or off, got "${v}"`);
}

export class CudaBackend implements ExpertBackend {
  readonly name = "cuda" as const;
  readonly kind = "cuda" as const;
  readonly deviceCount = 1;
  /** Deduplicated batches gathered and summed on the GPU; SWITCHYARD_CUDA_TOKEN_ROWS=host does both on the host (A/B). */
  readonly takesTokenRows: boolean;
  /** SWITCHYARD_CUDA_RUNS_IN_FLIGHT (1-3, default 2): batches staged and queued on the GPU at once. */
  readonly runsInFlight: number;
  /** SWITCHYARD_CUDA_MERGE_BATCHES (on by default): queued batches of a layer share a run. */
  readonly mergesBatches: boolean;
  private ctx: object | undefined;
  private dims: { d: number; f: number } | undefined;
  private cache: GpuSlotCache<CudaPrepared> | undefined;
  private requestedSlots: number | undefined;
  /** The worker's --max-rows (setMaxRunRows): no run holds more. */
  private maxRows: number | undefined;
  /** SWITCHYARD_GPU_MAX_ROWS: the row limit, in place of the one from free memory. */
  private readonly rowsOverride: number | undefined;
  /** Rows one run holds at most, set with the context (run-rows.ts). */
  private rowLimit: RunRowLimit | undefined;
  private log: ((line: string) => void) | undefined;
  private readonly sinks = new Set<DeviceCacheSink>();
  private readonly fatalListeners = new Set<(why: string) => void>();
  /** The first fatal CUDA error on this device (the context is unusable from then on), or null. */
  broken: string | null = null;
  private runs = 0;
  /**
   * Tests only (SWITCHYARD_CUDA_FAULT_AT_RUN=N): a real device fault (an illegal address, addon._faultForTests) right
   * before this backend's Nth run, so that the whole fatal path (the run's error, the worker's health, its exit) can
   * be tested on a GPU. 0: never.
   */
  private readonly faultAtRun: number;

  constructor(
    readonly addon: CudaAddon,
    readonly info: CudaProbeInfo,
    readonly env: NodeJS.ProcessEnv = process.env,
    readonly onCacheEvent?: DeviceCacheSink,
    /** The CUDA device this backend's context, streams and slots live on. */
    readonly device = 0,
  ) {
    const where = env.SWITCHYARD_CUDA_TOKEN_ROWS ?? "device";
    if (where !== "device" && where !== "host")
      throw new Error(`SWITCHYARD_CUDA_TOKEN_ROWS: expected device or host, got "${where}"`);
    this.takesTokenRows = where === "device";
    this.runsInFlight = runsInFlight(env);
    this.mergesBatches = mergeBatches(env);
    this.rowsOverride = gpuMaxRows(env);
    const fault = env.SWITCHYARD_CUDA_FAULT_AT_RUN;
    this.faultAtRun = fault ? Number(fault) : 0;
    if (!Number.isInteger(this.faultAtRun) || this.faultAtRun < 0)
      throw new Error(`SWITCHYARD_CUDA_FAULT_AT_RUN: expected an integer >= 0 (tests only), got "${fault}"`);
  }

  setDeviceCacheCapacity(experts: number): void {
    if (!Number.isInteger(experts) || experts < 1)
      throw new Error(`cache capacity: expected an integer >= 1, got ${experts}`);
    // The slots are allocated with the context at the first prepare(); after that the size is fixed.
    if (this.cache) throw new Error("cuda backend: the GPU expert cache is already allocated");
    this.requestedSlots = experts;
  }

  /** The worker's --max-rows: the row limit of a run is never above it (the effective limit is the least). */
  setMaxRunRows(rows: number): void {
    if (!Number.isInteger(rows) || rows < 1) throw new Error(`max rows: expected an integer >= 1, got ${rows}`);
    this.maxRows = rows;
    if (this.rowLimit) this.rowLimit = this.limitRows(this.rowLimit.freeBytes);
  }

  /** Rows one run holds at most (a batch with more runs in parts); undefined until the context exists. */
  maxRunRows(): number | undefined {
    return this.rowLimit?.rows;
  }

  /** The worker's log: the row limit's line when the context is made. */
  setLog(log: (line: string) => void): void {
    this.log = log;
  }

  private limitRows(freeBytes: number | undefined): RunRowLimit {
    const { d, f } = this.dims as { d: number; f: number };
    return runRowLimit({
      d,
      f,
      slots: (this.cache as GpuSlotCache<CudaPrepared>).capacity,
      runsInFlight: this.runsInFlight,
      freeBytes,
      override: this.rowsOverride,
      maxRows: this.maxRows,
    });
  }

  addDeviceCacheSink(sink: DeviceCacheSink): () => void {
    this.sinks.add(sink);
    return () => this.sinks.delete(sink);
  }

  deviceCacheStats(): GpuCacheStats | undefined {
    return this.cacheStats();
  }

  private emit(kind: DeviceCacheEvent, bytes?: number): void {
    this.onCacheEvent?.(kind, bytes);
    for (const s of this.sinks) s(kind, bytes);
  }

  describe(): string {
    const slots = this.cache
      ? `, GPU expert cache ${this.cache.capacity} slots, at most ${this.rowLimit?.rows} rows per run`
      : "";
    const dev = this.device > 0 || (this.info.devices ?? 1) > 1 ? `device ${this.device}, ` : "";
    return `cuda (${dev}${this.info.name}, ${this.info.sms} SMs, cc ${this.info.cc}, sy_moe wgmma/TMA kernels${slots})`;
  }

  /** GPU-tier cache counters (hits, misses, evictions, transfer bytes, resident, capacity). */
  cacheStats(): GpuCacheStats | undefined {
    return this.cache ? { ...this.cache.stats } : undefined;
  }

  async prepare(w: ExpertWeights): Promise<PreparedExpert> {
    const { d, f } = checkExpertWeights(w);
    // held for the GPU tier's uploads, each read in place on a worker thread
    refuseResizable({ "gate.data": w.gate.data, "up.data": w.up.data, "down.data": w.down.data });
    if (!this.dims) {
      const bytes = 3 * d * f * 2;
      const slots = slotCount(this.env, this.info.totalMem, bytes, this.requestedSlots, this.info.freeMem);
      // Everything that can refuse a setting before the context takes its memory; ctx, dims and cache set together.
      const policy = makePolicy(this.env.SWITCHYARD_GPU_CACHE_POLICY ?? "lru");
      let ctx: object;
      try {
        ctx = this.addon.createContext({ d, f, slots, device: this.device, runsInFlight: this.runsInFlight });
      } catch (err) {
        const gib = ((slots * bytes) / 2 ** 30).toFixed(1);
        throw new Error(
          `GPU expert cache of ${slots} slots (${gib} GiB) on CUDA device ${this.device}: ${(err as Error).message}; ` +
            "give the pool fewer resident experts (cache.residentExperts, the worker's --cache-capacity) or " +
            "SWITCHYARD_GPU_CACHE_SLOTS, or this worker a GPU of its own",
        );
      }
      this.cache = new GpuSlotCache<CudaPrepared>(
        slots,
        policy,
        (slot, e) =>
          this.addon.upload(ctx, slot, e.gate, e.up, e.down).catch((err: unknown) => {
            throw this.failed(err, "GPU upload");
          }),
        (kind, bytes) => this.emit(kind, bytes),
      );
      this.ctx = ctx;
      this.dims = { d, f };
      this.rowLimit = this.limitRows(this.freeAfterSlots(ctx, slots * bytes));
      this.log?.(describeRowLimit(this.rowLimit, this.device));
    } else if (this.dims.d !== d || this.dims.f !== f) {
      throw new Error(
        `cuda backend: expert shape d=${d} f=${f} differs from the first expert's d=${this.dims.d} f=${this.dims.f}`,
      );
    }
    const nat = (m: WeightMatrix): NativeWeight => ({
      dtype: protoDType(m.dtype),
      rows: m.rows,
      cols: m.cols,
      data: m.data,
    });
    return new CudaPrepared(d, f, 3 * d * f * 2, nat(w.gate), nat(w.up), nat(w.down));
  }

  /**
   * What the device has free now that the context holds its slots: the addon's figure (cudaMemGetInfo), else, from
   * an addon built before it, device 0's free memory at the probe less the slots, else unknown.
   */
  private freeAfterSlots(ctx: object, slotBytes: number): number | undefined {
    try {
      const m = this.addon.memInfo?.(ctx);
      if (m) return m.free;
    } catch {
      // no figure: the estimate below, or none
    }
    if (this.device === 0 && this.info.freeMem !== undefined) return Math.max(0, this.info.freeMem - slotBytes);
    return undefined;
  }

  /** Starts moving experts to the GPU ahead of use (best effort; resolves when done). */
  prefetch(experts: readonly PreparedExpert[], o?: { evict?: boolean }): Promise<unknown[]> {
    if (!this.cache) return Promise.resolve([]);
    return this.cache.prefetch(
      experts.filter((e): e is CudaPrepared => e instanceof CudaPrepared),
      o,
    );
  }

  /** The host tier let these go: their GPU slots are freed (at once, or when the batches using them finish). */
  discard(experts: readonly PreparedExpert[]): void {
    this.cache?.discard(experts.filter((e): e is CudaPrepared => e instanceof CudaPrepared));
  }

  /** Hears the first fatal CUDA error on this device (once): the worker stops serving and restarts. */
  onFatal(listener: (why: string) => void): void {
    this.fatalListeners.add(listener);
  }

  /** An addon rejection as the worker answers it (cudaFailure); a fatal one marks this device broken, once. */
  private failed(err: unknown, what: string): unknown {
    const f = cudaFailure(err, `${what} on CUDA device ${this.device}`);
    if (f.fatal && this.broken === null) {
      this.broken = (f.error as SwitchyardError).message;
      for (const l of this.fatalListeners) {
        try {
          l(this.broken);
        } catch {
          // a listener's own failure must not replace the run's error
        }
      }
    }
    return f.error;
  }

  async run(req: RunRequest): Promise<Uint8Array> {
    const { signal } = req;
    if (signal?.aborted) throw abortError(signal);
    if (this.broken !== null) throw unavailable(this.broken);
    if (!this.cache || !this.ctx || !this.dims) throw new Error("cuda backend: run() before any prepare()");
    // A batch that needs more experts than the GPU has slots (cache.residentExperts below the experts one batch
    // touches), or more rows than its run buffers fit in (rowLimit), runs in parts of at most that many experts and
    // rows, one after another, put back together as a multi-device run's parts are; the cache would refuse it
    // whole, the device run out of memory. Parts hold the rows of slices only (rows in no slice stay zero).
    const capacity = this.cache.capacity;
    const maxRows = this.rowLimit?.rows ?? Number.POSITIVE_INFINITY;
    const rowBytes = req.cols * dtypeSize(req.dtype);
    const distinctTokens = req.tokenRows ? req.tokens.byteLength / rowBytes : req.rows;
    const live = req.slices.filter((s) => s.count > 0);
    if (new Set(live.map((s) => s.expert)).size <= capacity && req.rows <= maxRows && distinctTokens <= maxRows)
      return this.runWithinSlots(req);
    const share: DeviceShare = { slices: [], from: [], rows: 0 };
    for (const s of live) {
      share.slices.push({ expert: s.expert, offset: share.rows, count: s.count });
      share.from.push({ offset: s.offset, count: s.count });
      share.rows += s.count;
    }
    const shares = [{ device: this.device, parts: chunkShare(share, { slots: capacity, rows: maxRows }) }];
    // Each part's device sum would round a token's sum once more per part than one run's does. The parts answer
    // their rows unscaled, and the host sums them once, in row order with the weights in fp32: the arithmetic of
    // the device's sum (token_rows.cu), so the answer is that of one run, bit for bit where each row's bits are
    // (see the README: sy_moe may pick another tiling for a part's fewer rows).
    let sub: RunRequest = req.sumByToken ? { ...req, sumByToken: false, rowWeights: undefined } : req;
    // Every part of a deduplicated batch takes all its distinct tokens up (subRequest): more of them than a run
    // holds would not fit in any part, so such a batch's rows are gathered here and go up as plain rows.
    if (req.tokenRows && distinctTokens > maxRows)
      sub = { ...sub, tokens: gatherRows(req.tokens, req.tokenRows, rowBytes), tokenRows: undefined };
    const rows = await runShares(sub, shares, (_d, part) => this.runWithinSlots(part));
    if (!req.sumByToken) return rows;
    const sums = sumRowsByToken(
      rows,
      req.dtype,
      req.tokenRows as Uint32Array,
      distinctTokens,
      req.cols,
      req.rowWeights,
    );
    return new Uint8Array(sums.buffer, sums.byteOffset, sums.byteLength);
  }

  /** A run whose experts fit in the slots at once. */
  private async runWithinSlots(req: RunRequest): Promise<Uint8Array> {
    const { signal } = req;
    if (!this.cache || !this.ctx || !this.dims) throw new Error("cuda backend: run() before any prepare()");
    if (req.cols !== this.dims.d) throw new Error(`cols: expected ${this.dims.d}, got ${req.cols}`);
    refuseResizable({ tokens: req.tokens }); // read in place on the run's worker thread (the rest is copied)
    const experts = req.slices.map((s) => {
      if (!(s.expert instanceof CudaPrepared)) throw new Error("slice expert was not prepared by cuda");
      return s.expert;
    });
    const slots = await this.cache.acquire(experts, signal);
    try {
      if (signal?.aborted) throw abortError(signal);
      if (++this.runs === this.faultAtRun) this.addon._faultForTests?.(this.ctx);
      const rowSlots = new Int32Array(req.rows).fill(-1);
      req.slices.forEach((s, i) => {
        rowSlots.fill(slots[i] as number, s.offset, s.offset + s.count);
      });
      const out = await this.addon
        .run(this.ctx, {
          dtype: req.dtype,
          tokens: req.tokens,
          rows: req.rows,
          cols: req.cols,
          rowSlots,
          rowWeights: req.rowWeights,
          tokenRows: req.tokenRows,
          sumByToken: req.sumByToken,
        })
        .catch((err: unknown) => {
          throw this.failed(err, "GPU run");
        });
      if (out.deviceMs !== undefined) req.onDeviceTime?.(out.deviceMs);
      if (signal?.aborted) throw abortError(signal);
      return out;
    } finally {
      this.cache.release(experts);
    }
  }
}

export type GpuCacheEventSink = DeviceCacheSink;
let gpuCacheSink: GpuCacheEventSink | undefined;
/** Where GPU-tier cache events go (e.g. the worker's /metrics counters); set before the backend is probed. */
export function setGpuCacheEventSink(sink: GpuCacheEventSink | undefined): void {
  gpuCacheSink = sink;
}

/** select.ts calls this (dynamic import of ./cuda.js): a backend when the addon loads and a Hopper GPU answers. */
export async function probeCudaBackend(): Promise<ExpertBackend | { unavailable: string }> {
  const addon = loadCudaAddon();
  if ("unavailable" in addon) return addon;
  let info: CudaProbeInfo;
  try {
    info = addon.probe();
  } catch (err) {
    return { unavailable: `CUDA probe failed: ${err instanceof Error ? err.message : String(err)}` };
  }
  if (!info.ok) return { unavailable: info.error ?? "no usable CUDA device" };
  const sink: DeviceCacheSink = (kind, bytes) => gpuCacheSink?.(kind, bytes);
  const n = cudaDevices(process.env, info.devices ?? 1);
  // The CPU addon (host sums: a multi-device batch's parts, SWITCHYARD_CUDA_TOKEN_ROWS=host) sets
  // SWITCHYARD_CPU_THREADS when it loads: loaded lazily, that setenv could race the CUDA threads' getenv (sy_moe reads
  // its tuning variables per call) and read freed memory. Loaded now, before any CUDA thread runs; a missing CPU
  // addon is only reported where it is needed.
  loadNativeAddon();
  if (n === 1) return new CudaBackend(addon, info, process.env, sink);
  return new MultiDeviceBackend(
    Array.from({ length: n }, (_, device) => new CudaBackend(addon, info, process.env, sink, device)),
  );
}

/**
 * Devices the worker runs on: every visible one (a pod's worker.gpusPerWorker GPUs), or SWITCHYARD_CUDA_DEVICES of
 * them (1 keeps one device, as before multi-device workers; for A/B).
 */
export function cudaDevices(env: NodeJS.ProcessEnv, visible: number): number {
  const v = env.SWITCHYARD_CUDA_DEVICES;
  if (v === undefined || v === "") return Math.max(1, visible);
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > visible)
    throw new Error(
      `SWITCHYARD_CUDA_DEVICES: expected an integer in [1, ${visible}] (the visible devices), got "${v}"`,
    );
  return n;
}
