// Native CPU backend: the N-API addon in expert-worker/native (AVX-512/AVX2 micro-kernels, own thread pool).
// The addon runs every job on a libuv worker thread, so the event loop never blocks; cancellation is a shared
// Int32 flag (a SharedArrayBuffer: the addon refuses any other) the kernel reads before each tile.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { cpuBudget, protoDType } from "@switchyard/moe";
import { abortError } from "../queue.js";
import {
  checkExpertWeights,
  type ExpertBackend,
  type ExpertWeights,
  type PreparedExpert,
  type RunRequest,
  refuseResizable,
  type WeightMatrix,
} from "./types.js";

/** The addon's raw surface (see native/src/addon.cc). */
export interface NativeAddon {
  prepareExpert(gate: NativeWeight, up: NativeWeight, down: NativeWeight): Promise<object>;
  expertInfo(handle: object): { d: number; f: number; bytes: number };
  runExperts(opts: {
    dtype: number;
    tokens: Uint8Array;
    rows: number;
    cols: number;
    slices: Uint32Array;
    experts: object[];
    rowWeights?: Float32Array;
    cancel?: Int32Array;
  }): Promise<{ output: Uint8Array; tilesDone: number; tilesTotal: number }>;
  stats(): NativeStats;
  measurePeak(
    threads?: number,
    seconds?: number,
  ): Promise<{ gflops: number; perThread: number[]; perThreadCpu: number[]; threads: number; seconds: number }>;
  /** Streaming-read bandwidth in GB/s over a buffer of `mib` MiB (best of 5 passes). */
  measureReadBandwidth(mib?: number, threads?: number): Promise<number>;
  /** acc[tokenRows[i]] += weights[i] * rows[i] in fp32 (rows [n, d] of `dtype`, acc [u, d]), in row order. */
  sumRowsByToken(
    rows: Uint8Array,
    dtype: number,
    tokenRows: Uint32Array,
    acc: Float32Array,
    weights?: Float32Array,
  ): void;
}

export interface NativeWeight {
  dtype: number;
  rows: number;
  cols: number;
  data: Uint8Array;
}

export interface NativeStats {
  tilesDone: number;
  runsStarted: number;
  runsCompleted: number;
  runsCancelled: number;
  threads: number;
  isa: string;
  cuda: boolean;
}

const here = dirname(fileURLToPath(import.meta.url));
/** build/ sits next to src/ and dist/. */
export const NATIVE_ADDON_PATH = resolve(here, "../../build/switchyard_native.node");

let cached: NativeAddon | null | undefined;
let loadError: unknown;

/** The addon, or null when it is not built / fails to load (the reason is in nativeLoadError()). */
export function loadNativeAddon(): NativeAddon | null {
  if (cached !== undefined) return cached;
  try {
    if (!existsSync(NATIVE_ADDON_PATH)) throw new Error(`not built: ${NATIVE_ADDON_PATH} (npm run build)`);
    // The addon's thread pool (native/src/thread_pool.cc) sizes itself from SWITCHYARD_CPU_THREADS, else from every
    // core of the machine; it reads the variable once, at its first use. Unset, it gets the CPUs this process may
    // keep busy (a pod's CPU limit, not the node's cores: packages/moe cpuBudget).
    if (!process.env.SWITCHYARD_CPU_THREADS) process.env.SWITCHYARD_CPU_THREADS = String(cpuBudget());
    cached = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeAddon;
  } catch (err) {
    loadError = err;
    cached = null;
  }
  return cached;
}

export function nativeLoadError(): string {
  return loadError instanceof Error ? loadError.message : String(loadError ?? "");
}

class NativePrepared implements PreparedExpert {
  constructor(
    readonly handle: object,
    readonly hiddenSize: number,
    readonly intermediateSize: number,
    readonly bytes: number,
  ) {}
}

export class NativeCpuBackend implements ExpertBackend {
  readonly name = "cpu-native" as const;
  readonly kind = "cpu" as const;

  constructor(readonly addon: NativeAddon) {}

  describe(): string {
    const s = this.addon.stats();
    return `cpu-native (${s.isa} micro-kernels, ${s.threads} threads)`;
  }

  async prepare(w: ExpertWeights): Promise<PreparedExpert> {
    const { d, f } = checkExpertWeights(w);
    // the prepare reads the weights in place on a worker thread (the run copies its tokens: no such check there)
    refuseResizable({ "gate.data": w.gate.data, "up.data": w.up.data, "down.data": w.down.data });
    const nat = (m: WeightMatrix): NativeWeight => ({
      dtype: protoDType(m.dtype),
      rows: m.rows,
      cols: m.cols,
      data: m.data,
    });
    const handle = await this.addon.prepareExpert(nat(w.gate), nat(w.up), nat(w.down));
    return new NativePrepared(handle, d, f, this.addon.expertInfo(handle).bytes);
  }

  async run(req: RunRequest): Promise<Uint8Array> {
    const { signal } = req;
    if (signal?.aborted) throw abortError(signal);
    const handles: object[] = [];
    const index = new Map<PreparedExpert, number>();
    const slices = new Uint32Array(req.slices.length * 3);
    req.slices.forEach((s, i) => {
      if (!(s.expert instanceof NativePrepared)) throw new Error("slice expert was not prepared by cpu-native");
      let k = index.get(s.expert);
      if (k === undefined) {
        k = handles.length;
        handles.push(s.expert.handle);
        index.set(s.expert, k);
      }
      slices[i * 3] = k;
      slices[i * 3 + 1] = s.offset;
      slices[i * 3 + 2] = s.count;
    });
    const cancel = new Int32Array(new SharedArrayBuffer(4));
    const onAbort = () => Atomics.store(cancel, 0, 1);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const r = await this.addon.runExperts({
        dtype: req.dtype,
        tokens: req.tokens,
        rows: req.rows,
        cols: req.cols,
        slices,
        experts: handles,
        rowWeights: req.rowWeights,
        cancel,
      });
      if (signal?.aborted) throw abortError(signal);
      return r.output;
    } catch (err) {
      if ((err as { code?: unknown }).code === "CANCELLED" && signal) throw abortError(signal);
      throw err;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }
}
