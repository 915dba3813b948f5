// The one typed interface behind which every expert compute backend sits: the native CPU addon, the TypeScript
// reference (fallback and test oracle) and, where built, CUDA.
//
// Computation, per slice {expert, offset, count} of a token matrix x [N, d]:
//   y[r] = w[r] * (silu(x[r]·Wg^T) * (x[r]·Wu^T))·Wd^T      for r in [offset, offset + count)
// with HF Linear layouts Wg, Wu: [f, d], Wd: [d, f]; rows outside every slice are zero; fp32 accumulation; output
// in the dtype of the tokens.

import { type ExpertWeights, weightBytesPerElement } from "@switchyard/moe";
import type { DType } from "@switchyard/protocol";

// Weights come as the checkpoint reader hands them out: raw bytes, HF layout, dtype as named in config.json.
export type { ExpertWeights, WeightMatrix } from "@switchyard/moe";

/** A backend's ready-to-run form of one expert (what the residency cache holds). Opaque to callers. */
export interface PreparedExpert {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  /** Memory the prepared form occupies (host or device). */
  readonly bytes: number;
}

export interface PreparedSlice {
  expert: PreparedExpert;
  offset: number;
  count: number;
}

export interface RunRequest {
  /** FLOAT32 | BFLOAT16 | FLOAT16 */
  dtype: DType;
  /** [rows, cols] little-endian elements of dtype. */
  tokens: Uint8Array;
  rows: number;
  cols: number;
  /** Non-overlapping, within [0, rows); validated by the caller. */
  slices: PreparedSlice[];
  /** Optional [rows] per-row output scale (with `sumByToken`: the sum's weights, the rows stay unscaled). */
  rowWeights?: Float32Array;
  /**
   * A deduplicated batch, for backends with `takesTokenRows`: `tokens` holds the distinct tokens and row r computes
   * token tokenRows[r] (each < the tokens sent). Others get the rows expanded by the caller.
   */
  tokenRows?: Uint32Array;
  /**
   * With tokenRows: answer FLOAT32 [distinct tokens, cols] instead of the rows: each token's rows, rounded to dtype
   * and unscaled, weighted by rowWeights and added in row order, each step in double rounded to fp32
   * (token-rows.ts sumRowsByToken, bit for bit).
   */
  sumByToken?: boolean;
  /** Aborting stops the run (between tiles for the native backends) and rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Backends with a device clock (CUDA) call this once per completed run with the device's own milliseconds for it:
   * its transfers and kernels, from events on the device's stream, so without the time it was queued there behind
   * another run. CPU backends never call it.
   */
  onDeviceTime?: (ms: number) => void;
}

export type BackendName = "cpu-native" | "cpu-reference" | "cuda";

/** Events of a backend's own device tier of experts (the CUDA backend's GPU slots over the host cache). */
export type DeviceCacheEvent = "hit" | "miss" | "evict" | "transfer";
export type DeviceCacheSink = (kind: DeviceCacheEvent, bytes?: number) => void;

export interface DeviceCacheStats {
  hits: number;
  misses: number;
  evictions: number;
  transferBytes: number;
  resident: number;
  capacity: number;
}

export interface ExpertBackend {
  readonly name: BackendName;
  /** What Status and switchyard_worker_backend_info report: cpu | cuda. */
  readonly kind: "cpu" | "cuda";
  /** GPUs it runs on (a multi-device backend: its devices; a CUDA backend 1); absent on CPU. */
  readonly deviceCount?: number;
  /** One human-readable line for the start-up log (ISA, threads, library...). */
  describe(): string;
  prepare(weights: ExpertWeights): Promise<PreparedExpert>;
  /** Output [rows, cols] in `dtype` (FLOAT32 [distinct tokens, cols] with `sumByToken`). */
  run(req: RunRequest): Promise<Uint8Array>;
  /**
   * run() takes `tokenRows` / `sumByToken` itself (the CUDA backend: gather and sum on the device, so only the
   * distinct tokens cross PCIe). Otherwise the worker expands and sums on the host.
   */
  readonly takesTokenRows?: boolean;
  /**
   * Batches the worker may have in run() at once (default 1). The CUDA backend takes 2: the next batch stages and
   * queues its work while the GPU computes the one before, so the GPU does not wait for the host between batches.
   */
  readonly runsInFlight?: number;
  /**
   * Whether one run of several batches of a layer costs less than their runs apart (the CUDA backend: a run reads
   * each of its experts' weights once, whatever its rows). The worker then lets queued batches of a layer share a run.
   */
  readonly mergesBatches?: boolean;
  close?(): Promise<void>;
  /**
   * Hears the first fatal device error (the CUDA backend: a sticky error such as an illegal address, after which the
   * device's context fails every call for the rest of the process). The worker stops serving and exits to restart.
   */
  onFatal?(listener: (why: string) => void): void;

  // Backends with a device tier of experts (CUDA) implement these; CPU backends compute from the host cache.
  /**
   * Starts moving prepared experts to the device ahead of use (uploads overlap the compute of running batches);
   * resolves when they are there, with the errors of the uploads that failed (empty: all there). Best effort: never
   * rejects. `evict: false` only fills free slots (used for look-ahead, which must not push out experts other queued
   * batches need).
   */
  prefetch?(experts: readonly PreparedExpert[], o?: { evict?: boolean }): Promise<readonly unknown[]>;
  /**
   * The host tier evicted these prepared experts: they will not be run again (a reload prepares new ones), so their
   * device slots are freed, at once or when the batches using them finish.
   */
  discard?(experts: readonly PreparedExpert[]): void;
  /** Device slots to use (the pool's cache capacity, --cache-capacity); called before the first prepare(). */
  setDeviceCacheCapacity?(experts: number): void;
  /** Subscribes to device-tier cache events (the worker's /metrics); returns the unsubscribe. */
  addDeviceCacheSink?(sink: DeviceCacheSink): () => void;
  /** Device-tier counters, undefined until the tier exists (first prepare()). */
  deviceCacheStats?(): DeviceCacheStats | undefined;

  // Backends whose runs take device memory by their rows (CUDA: run-rows.ts) implement these.
  /** The worker's --max-rows: no run holds more rows (the backend's own limit is the least of it and its own). */
  setMaxRunRows?(rows: number): void;
  /**
   * Rows one run holds at most: run() runs a batch with more in parts, and the worker merges no more queued rows
   * than this into one run. Undefined until known (CUDA: the first prepare(), which allocates the device's slots).
   */
  maxRunRows?(): number | undefined;
  /** Where the backend writes the lines of the worker's log it has to say (CUDA: its row limit, once known). */
  setLog?(log: (line: string) => void): void;
}

/** Checks shared by every backend's prepare(): gate/up [f, d], down [d, f], byte lengths. */
export function checkExpertWeights(w: ExpertWeights): { d: number; f: number } {
  const f = w.gate.rows;
  const d = w.gate.cols;
  for (const [name, m, rows, cols] of [
    ["gate", w.gate, f, d],
    ["up", w.up, f, d],
    ["down", w.down, d, f],
  ] as const) {
    if (m.rows !== rows || m.cols !== cols)
      throw new Error(`${name}: expected shape [${rows}, ${cols}], got [${m.rows}, ${m.cols}]`);
    if (m.dtype !== "bfloat16" && m.dtype !== "float16" && m.dtype !== "float32")
      throw new Error(`${name}: unsupported dtype ${m.dtype}`);
    const size = weightBytesPerElement(m.dtype);
    if (m.data.byteLength !== rows * cols * size)
      throw new Error(`${name}: expected ${rows * cols * size} bytes, got ${m.data.byteLength}`);
  }
  return { d, f };
}

/**
 * Throws unless every array can be read in place by a native backend's threads until its promise settles: a resizable
 * ArrayBuffer could shrink under them (a read past its end: the process crashed). The addons refuse such buffers too;
 * this names the caller's input. (The inputs a native run copies, the CPU run's tokens, need no such check.)
 */
export function refuseResizable(arrays: Record<string, ArrayBufferView>): void {
  for (const [name, a] of Object.entries(arrays))
    if ((a.buffer as { resizable?: boolean }).resizable === true)
      throw new TypeError(
        `${name}: backed by a resizable ArrayBuffer, which could shrink while native threads read it; pass a fixed-length copy`,
      );
}
