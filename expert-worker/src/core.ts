// The worker's request logic, free of gRPC: validate a batch, queue it, fetch its experts from the residency
// cache (loading misses from the checkpoint), run the backend, account metrics. server.ts wraps it in grpc-js.

import {
  DType,
  dtypeSize,
  type ExpertBatch,
  type ExpertKey,
  type ExpertResult,
  invalidArgument,
  type WorkerStatus,
} from "@switchyard/protocol";
import type { ExpertBackend, ExpertWeights, PreparedExpert, PreparedSlice } from "./backend/types.js";
import { type ExpertId, keyOf, type ResidencyCache } from "./cache.js";
import type { WorkerMetrics } from "./metrics.js";
import { abortError, type WorkQueue } from "./queue.js";
import { gatherRows, sumRowsByToken } from "./token-rows.js";
import { type BatchContext, expertIdsText, validateBatch } from "./validate.js";

/** Where experts come from: a checkpoint reader (packages/moe) or anything with the same shape. */
export interface ExpertSource {
  layers: number;
  /** Routed experts per layer. */
  experts: number;
  /** The shared expert's slices (spec.ts sharedSlices), served as ids [experts, experts + sharedSlices); 0 = none. */
  sharedSlices?: number;
  hiddenSize: number;
  intermediateSize: number;
  /** Layers that have routed experts (DeepSeek-V3's first layers are dense). */
  isMoeLayer(layer: number): boolean;
  /** Reads only this expert's three tensors. */
  readExpert(layer: number, expert: number): Promise<ExpertWeights>;
  close?(): Promise<void>;
}

export interface CoreOptions {
  pool: string;
  workerId: string;
  source: ExpertSource;
  backend: ExpertBackend;
  cache: ResidencyCache;
  queue: WorkQueue;
  metrics: WorkerMetrics;
  /** The experts this worker may load; undefined = all. */
  served?: ReadonlySet<string>;
  maxRows?: number;
}

/** Expert ids a source serves per layer: its routed experts, then the shared expert's slices. */
export function servableExperts(source: Pick<ExpertSource, "experts" | "sharedSlices">): number {
  return source.experts + (source.sharedSlices ?? 0);
}

export function weightBytes(w: ExpertWeights): number {
  return w.gate.data.byteLength + w.up.data.byteLength + w.down.data.byteLength;
}

export class WorkerCore {
  readonly ctx: BatchContext;
  /** The data-path port Status advertises (set by the shell that bound it); 0 = not offered. */
  dataPort = 0;

  constructor(readonly o: CoreOptions) {
    const { source } = o;
    this.ctx = {
      pool: o.pool,
      layers: source.layers,
      experts: source.experts,
      sharedSlices: source.sharedSlices,
      hiddenSize: source.hiddenSize,
      serves: (layer, expert) => this.serves(layer, expert),
      maxRows: o.maxRows,
    };
  }

  serves(layer: number, expert: number): boolean {
    return this.o.source.isMoeLayer(layer) && (this.o.served === undefined || this.o.served.has(keyOf(layer, expert)));
  }

  /** Runs one batch; throws SwitchyardError (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ...). */
  async runBatch(batch: ExpertBatch, signal?: AbortSignal): Promise<ExpertResult> {
    const started = performance.now();
    const { metrics, cache, backend, queue } = this.o;
    const b = validateBatch(batch, this.ctx);
    if (!this.o.source.isMoeLayer(b.layer))
      throw invalidArgument("layer", `layer ${b.layer} is dense (no routed experts)`);
    let hits = 0;
    let misses = 0;
    let computeMs = 0;
    let deviceMs: number | undefined; // the backend's device clock for the run (CUDA), if it has one
    const live = b.slices.filter((s) => s.count > 0);
    const onDevice = b.tokenRows !== undefined && backend.takesTokenRows === true;
    const distinct = [...new Set(live.map((s) => s.expert))];
    if (backend.prefetch && queue.depth >= queue.concurrency) {
      // Every run slot is busy: start uploading this batch's host-resident experts to the device tier now, so the
      // copies overlap that compute. When this batch is next (only running ones ahead, whose experts are pinned),
      // making room is what its own run would do a moment later; behind other waiting batches it uses free slots
      // only, so look-ahead never evicts what the batches ahead of it are about to use.
      const ready = distinct.map((e) => cache.peek(b.layer, e)).filter((p): p is PreparedExpert => p !== undefined);
      if (ready.length > 0) void backend.prefetch(ready, { evict: queue.depth === queue.concurrency });
    }
    const { value: output, queueWaitMs } = await queue.submit({
      signal,
      run: async (sig) => {
        const protect = new Set(distinct.map((e) => keyOf(b.layer, e)));
        const prepared = new Map<number, PreparedExpert>();
        for (const e of distinct) {
          const r = await cache.get(b.layer, e, protect);
          if (r.hit) hits++;
          else misses++;
          prepared.set(e, r.expert);
          // Loads can be slow (checkpoint read + packing): stop between them when the caller has gone.
          if (sig?.aborted) throw abortError(sig);
        }
        const slices: PreparedSlice[] = live.map((s) => ({
          expert: prepared.get(s.expert) as PreparedExpert,
          offset: s.offset,
          count: s.count,
        }));
        const t0 = performance.now();
        const out = await backend.run({
          dtype: b.dtype,
          // a deduplicated batch's distinct tokens: as they came to a backend that expands them on its device, else
          // one row per (token, expert) again here
          tokens: b.tokenRows && !onDevice ? gatherRows(b.tokens, b.tokenRows, b.cols * dtypeSize(b.dtype)) : b.tokens,
          tokenRows: onDevice ? b.tokenRows : undefined,
          sumByToken: onDevice && b.combine,
          rows: b.rows,
          cols: b.cols,
          slices,
          // combine on the host: the rows unscaled, the weights applied in fp32 by the sum (as the router's combine
          // does); the device sum takes them as the sum's weights
          rowWeights: b.combine && !onDevice ? undefined : b.rowWeights,
          signal: sig,
          onDeviceTime: (ms) => {
            deviceMs = ms;
          },
        });
        computeMs = performance.now() - t0;
        return out;
      },
    });
    // combine: each distinct token's rows summed (FLOAT32) instead of sent back one per expert; here unless the
    // backend summed them on its device
    const sums = b.combine && b.tokenRows;
    const combined = !sums
      ? null
      : onDevice
        ? output
        : sumRowsByToken(output, b.dtype, b.tokenRows as Uint32Array, b.distinct, b.cols, b.rowWeights);
    let tokens = 0;
    for (const s of live) {
      tokens += s.count;
      metrics.countExpertTokens(b.layer, s.expert, s.count);
    }
    metrics.tokens.inc(tokens);
    metrics.batchTokens.observe(tokens);
    metrics.runDuration.observe((performance.now() - started) / 1000);
    metrics.queueWait.observe(queueWaitMs / 1000);
    metrics.computeDuration.observe(computeMs / 1000);
    if (deviceMs !== undefined) metrics.deviceComputeDuration.observe(deviceMs / 1000);
    return {
      batchId: b.batchId,
      output: combined
        ? {
            dtype: DType.FLOAT32,
            shape: [b.distinct, b.cols],
            data: Buffer.from(combined.buffer, combined.byteOffset, combined.byteLength),
          }
        : {
            dtype: b.dtype as DType,
            shape: [b.rows, b.cols],
            data: Buffer.from(output.buffer, output.byteOffset, output.byteLength),
          },
      stats: {
        tokens,
        experts: distinct.length,
        cacheHits: hits,
        cacheMisses: misses,
        queueWaitMs,
        computeMs,
        backend: backend.name,
      },
      error: undefined,
    };
  }

  private checkKeys(keys: ExpertKey[], field: string): ExpertId[] {
    return keys.map((k, i) => {
      if (k.layer >= this.o.source.layers)
        throw invalidArgument(
          `${field}[${i}].layer`,
          `out of range: ${k.layer} (model has ${this.o.source.layers} layers)`,
        );
      if (k.expert >= servableExperts(this.o.source))
        throw invalidArgument(`${field}[${i}].expert`, `unknown expert ${k.expert} (${expertIdsText(this.o.source)})`);
      if (!this.serves(k.layer, k.expert))
        throw invalidArgument(
          `${field}[${i}].expert`,
          `expert ${k.expert} of layer ${k.layer} is not served by this worker`,
        );
      return { layer: k.layer, expert: k.expert };
    });
  }

  async prefetch(pool: string, keys: ExpertKey[]) {
    if (pool && pool !== this.o.pool)
      throw invalidArgument("pool", `this worker serves pool "${this.o.pool}", got "${pool}"`);
    const ids = this.checkKeys(keys, "experts");
    if (ids.length > this.o.cache.capacity)
      throw invalidArgument("experts", `${ids.length} experts exceed the cache capacity of ${this.o.cache.capacity}`);
    const r = await this.o.cache.prefetch(ids);
    const { backend, cache } = this.o;
    if (backend.prefetch) {
      // Loaded ahead on the host: move them to the device tier too (the copy stream overlaps running batches), so
      // the batch that needs them finds them there. Answer once they are on the device.
      const prepared = ids.map((i) => cache.peek(i.layer, i.expert)).filter((p) => p !== undefined);
      await backend.prefetch(prepared);
    }
    return r;
  }

  evict(pool: string, keys: ExpertKey[]): ExpertId[] {
    if (pool && pool !== this.o.pool)
      throw invalidArgument("pool", `this worker serves pool "${this.o.pool}", got "${pool}"`);
    const ids = this.checkKeys(keys, "experts");
    return this.o.cache.evict(ids);
  }

  status(): WorkerStatus {
    const { cache, queue, source } = this.o;
    const served: ExpertKey[] = [];
    if (this.o.served) for (const k of this.o.served) served.push(parseId(k));
    else
      for (let l = 0; l < source.layers; l++)
        if (source.isMoeLayer(l))
          for (let e = 0; e < servableExperts(source); e++) served.push({ layer: l, expert: e });
    return {
      workerId: this.o.workerId,
      backend: this.o.backend.kind,
      pool: this.o.pool,
      resident: cache.resident(),
      capacity: cache.capacity,
      queueDepth: queue.depth,
      queueCapacity: queue.capacity,
      cacheHits: BigInt(cache.hits),
      cacheMisses: BigInt(cache.misses),
      cacheEvictions: BigInt(cache.evictions),
      served,
      hiddenSize: source.hiddenSize,
      layers: source.layers,
      experts: source.experts,
      dataPort: this.dataPort,
      combines: true,
    };
  }
}

function parseId(k: string): ExpertKey {
  const [l, e] = k.split(":");
  return { layer: Number(l), expert: Number(e) };
}
