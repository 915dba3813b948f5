// The worker's request logic, free of gRPC: validate a batch, queue it, fetch its experts from the residency
// cache (loading misses from the checkpoint), run the backend, account metrics. server.ts wraps it in grpc-js.

import {
  DType,
  dtypeSize,
  type ExpertBatch,
  type ExpertKey,
  type ExpertResult,
  failedPrecondition,
  internal,
  invalidArgument,
  isSwitchyardError,
  SwitchyardError,
  type WorkerStatus,
} from "@switchyard/protocol";
import type { ExpertBackend, ExpertWeights, PreparedExpert, PreparedSlice } from "./backend/types.js";
import { type ExpertId, keyOf, type ResidencyCache } from "./cache.js";
import type { WorkerMetrics } from "./metrics.js";
import { abortError, type WorkQueue } from "./queue.js";
import { gatherRows, sumRowsByToken } from "./token-rows.js";
import { type BatchContext, expertIdsText, type ValidBatch, type ValidSlice, validateBatch } from "./validate.js";

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

/** One validated batch as its run needs it (core.runBatch -> WorkQueue.submitMergeable -> runParts). */
interface BatchPart {
  b: ValidBatch;
  live: ValidSlice[];
  distinct: number[];
  /** Its deduplicated rows go to the backend as they came (the backend gathers and sums on its device). */
  onDevice: boolean;
}

/** What a run answers each batch: its output and its part of the run's counts. */
interface PartResult {
  output: Uint8Array;
  hits: number;
  misses: number;
  computeMs: number;
}

/**
 * A merged run answers each batch on its own: a batch whose expert cannot be loaded, or whose own backend run fails,
 * gets that error while the batches merged with it still get their results.
 */
type PartOutcome = PartResult | { error: unknown };

/** Rows a merged run may hold (WorkQueue.submitMergeable's limit), unless CoreOptions.maxMergeRows says otherwise. */
export const DEFAULT_MAX_MERGE_ROWS = 4096;

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
  /**
   * Rows one backend run may merge from queued batches of a layer (backends with mergesBatches); default 4096, and
   * never more than maxRows.
   */
  maxMergeRows?: number;
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
      isMoeLayer: (layer) => source.isMoeLayer(layer),
      serves: (layer, expert) => this.serves(layer, expert),
      maxRows: o.maxRows,
    };
  }

  serves(layer: number, expert: number): boolean {
    return this.o.source.isMoeLayer(layer) && (this.o.served === undefined || this.o.served.has(keyOf(layer, expert)));
  }

  /**
   * Runs one batch; throws SwitchyardError (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ...).
   * `maxMessageBytes`: the largest message the transport answering it sends; a larger result is refused up front.
   */
  async runBatch(batch: ExpertBatch, signal?: AbortSignal, maxMessageBytes?: number): Promise<ExpertResult> {
    const started = performance.now();
    const { metrics, cache, backend, queue } = this.o;
    const b = validateBatch(batch, maxMessageBytes === undefined ? this.ctx : { ...this.ctx, maxMessageBytes });
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
    // A backend that reads each expert's weights once per run (CUDA) takes the batches of one layer that wait
    // together as one run: in a burst from several routers that is fewer weight reads for the same rows. Batches
    // merge only with their own kind (dtype; deduplicated or not; summed or not).
    const mode = b.tokenRows === undefined ? "rows" : onDevice ? (b.combine ? "sum" : "token-rows") : undefined;
    const key = backend.mergesBatches && mode ? `${b.layer}/${b.dtype}/${mode}` : undefined;
    metrics.queuedRows.inc(b.rows);
    const {
      value: outcome,
      queueWaitMs,
      merged,
    } = await queue
      .submitMergeable<BatchPart, PartOutcome>(
        { part: { b, live, distinct, onDevice }, key, weight: b.rows, signal },
        (parts, sig) => this.runParts(parts, sig),
        // no run above what one batch may hold (--max-rows bounds a run's memory too), nor above what the backend
        // runs at once (CUDA: the rows its run buffers fit in; more would be run in parts again)
        Math.min(
          this.o.maxMergeRows ?? DEFAULT_MAX_MERGE_ROWS,
          this.o.maxRows ?? Number.POSITIVE_INFINITY,
          backend.maxRunRows?.() ?? Number.POSITIVE_INFINITY,
        ),
      )
      .finally(() => metrics.queuedRows.dec(b.rows));
    if ("error" in outcome) throw outcome.error;
    if (merged > 1) metrics.mergedBatches.inc();
    const { output, hits, misses, computeMs } = outcome;
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

  /**
   * The parts' runs (batches of one layer and kind, WorkQueue.submitMergeable): their experts fetched once for all
   * of them, then one backend run for as many parts as the device's expert slots can hold at once (a run pins every
   * expert it uses; batches that fit alone must not fail together), each part's answer cut from its run.
   */
  private async runParts(parts: BatchPart[], sig: AbortSignal | undefined): Promise<PartOutcome[]> {
    const { cache, backend } = this.o;
    const layer = parts[0].b.layer;
    const experts = [...new Set(parts.flatMap((p) => p.distinct))];
    const protect = new Set(experts.map((e) => keyOf(layer, e)));
    const prepared = new Map<number, PreparedExpert>();
    const hit = new Map<number, boolean>();
    const failed = new Map<BatchPart, unknown>();
    for (const e of experts) {
      const need = parts.filter((p) => !failed.has(p) && p.distinct.includes(e));
      if (need.length === 0) continue; // only batches that already failed wanted it
      // Validated when the batch came; a plan change while it waited (or while the experts before this one loaded)
      // took the expert away. Loading it now would put it back in the cache, in a slot the new plan's experts need
      // (the warm-up fills free slots only), so those batches fail as validateBatch would have failed them; the
      // router retries FAILED_PRECONDITION on another replica.
      if (!this.serves(layer, e)) {
        for (const p of need) failed.set(p, notServed(p.b, e));
        continue;
      }
      try {
        const r = await cache.get(layer, e, protect);
        hit.set(e, r.hit);
        prepared.set(e, r.expert);
      } catch (err) {
        for (const p of need) failed.set(p, err);
      }
      // Loads can be slow (checkpoint read + packing): stop between them when the callers have gone.
      if (sig?.aborted) throw abortError(sig);
    }
    const slots = backend.deviceCacheStats?.()?.capacity ?? Number.POSITIVE_INFINITY;
    const groups: BatchPart[][] = [];
    let group: BatchPart[] = [];
    let used = new Set<number>();
    for (const p of parts) {
      if (failed.has(p)) continue;
      const more = p.distinct.filter((e) => !used.has(e));
      if (group.length > 0 && used.size + more.length > slots) {
        groups.push(group);
        group = [];
        used = new Set();
      }
      group.push(p);
      for (const e of p.distinct) used.add(e);
    }
    if (group.length > 0) groups.push(group);
    const done = new Map<BatchPart, PartResult>();
    for (const g of groups) {
      let results: Omit<PartResult, "hits" | "misses">[];
      try {
        results = await this.runMerged(g, prepared, sig);
      } catch (err) {
        if (sig?.aborted) throw err;
        for (const p of g) failed.set(p, err);
        continue;
      }
      g.forEach((p, i) => {
        done.set(p, {
          ...results[i],
          hits: p.distinct.filter((e) => hit.get(e)).length,
          misses: p.distinct.filter((e) => !hit.get(e)).length,
        });
      });
    }
    return parts.map((p) => done.get(p) ?? { error: failed.get(p) });
  }

  /**
   * One backend run for the parts: the rows (and, deduplicated, the distinct tokens) laid end to end, slices and
   * token indices shifted to match. One part runs exactly as it came.
   */
  private async runMerged(
    parts: BatchPart[],
    prepared: ReadonlyMap<number, PreparedExpert>,
    sig: AbortSignal | undefined,
  ): Promise<Omit<PartResult, "hits" | "misses">[]> {
    const { backend, metrics } = this.o;
    if (sig?.aborted) throw abortError(sig);
    const first = parts[0];
    const { dtype, cols } = first.b;
    const rowBytes = cols * dtypeSize(dtype);
    const slices: PreparedSlice[] = [];
    let rows = 0;
    let tokenCount = 0; // distinct tokens before each part (deduplicated batches)
    const rowBase: number[] = [];
    const tokenBase: number[] = [];
    for (const p of parts) {
      rowBase.push(rows);
      tokenBase.push(tokenCount);
      for (const s of p.live)
        slices.push({ expert: prepared.get(s.expert) as PreparedExpert, offset: rows + s.offset, count: s.count });
      rows += p.b.rows;
      tokenCount += p.b.distinct;
    }
    // a deduplicated batch's distinct tokens: as they came to a backend that expands them on its device, else one row
    // per (token, expert) again here
    const tokensOf = (p: BatchPart) =>
      p.b.tokenRows && !p.onDevice ? gatherRows(p.b.tokens, p.b.tokenRows, rowBytes) : p.b.tokens;
    // combine on the host: the rows unscaled, the weights applied in fp32 by the sum (as the router's combine does);
    // the device sum takes them as the sum's weights
    const weightsOf = (p: BatchPart) => (p.b.combine && !p.onDevice ? undefined : p.b.rowWeights);
    let tokens: Uint8Array;
    let tokenRows: Uint32Array | undefined;
    let rowWeights: Float32Array | undefined;
    if (parts.length === 1) {
      tokens = tokensOf(first);
      tokenRows = first.onDevice ? first.b.tokenRows : undefined;
      rowWeights = weightsOf(first);
    } else {
      tokens = Buffer.concat(parts.map(tokensOf));
      if (first.onDevice) {
        tokenRows = new Uint32Array(rows);
        parts.forEach((p, i) => {
          const src = p.b.tokenRows as Uint32Array;
          for (let r = 0; r < src.length; r++) tokenRows![rowBase[i] + r] = src[r] + tokenBase[i];
        });
      }
      if (parts.some((p) => weightsOf(p))) {
        rowWeights = new Float32Array(rows).fill(1);
        parts.forEach((p, i) => {
          const w = weightsOf(p);
          if (w) rowWeights!.set(w, rowBase[i]);
        });
      }
    }
    const t0 = performance.now();
    const out = await backend.run({
      dtype,
      tokens,
      tokenRows,
      sumByToken: first.onDevice && first.b.combine,
      rows,
      cols,
      slices,
      rowWeights,
      signal: sig,
      // the device's own time, once per run however many batches it answers (the GPU's busy share sums these)
      onDeviceTime: (ms) => metrics.deviceComputeDuration.observe(ms / 1000),
    });
    const computeMs = performance.now() - t0;
    // Each part's slice of the output: its rows, or its distinct tokens' fp32 sums.
    const summed = first.onDevice && first.b.combine;
    return parts.map((p, i) => {
      const [from, n, bytes] = summed ? [tokenBase[i], p.b.distinct, cols * 4] : [rowBase[i], p.b.rows, rowBytes];
      return { output: parts.length === 1 ? out : out.subarray(from * bytes, (from + n) * bytes), computeMs };
    });
  }

  private checkKeys(keys: ExpertKey[], field: string): ExpertId[] {
    return keys.map((k, i) => {
      if (k.layer >= this.o.source.layers)
        throw invalidArgument(
          `${field}[${i}].layer`,
          `out of range: ${k.layer} (model has ${this.o.source.layers} layers)`,
        );
      // before the served check, as validateBatch does: a dense layer's experts are not "not served", they do not exist
      if (!this.o.source.isMoeLayer(k.layer))
        throw invalidArgument(`${field}[${i}].layer`, `layer ${k.layer} is dense (no routed experts)`);
      if (k.expert >= servableExperts(this.o.source))
        throw invalidArgument(`${field}[${i}].expert`, `unknown expert ${k.expert} (${expertIdsText(this.o.source)})`);
      if (!this.serves(k.layer, k.expert))
        throw failedPrecondition(
          `expert ${k.expert} of layer ${k.layer} is not served by this worker`,
          `${field}[${i}].expert`,
        );
      return { layer: k.layer, expert: k.expert };
    });
  }

  async prefetch(pool: string, keys: ExpertKey[]) {
    if (pool && pool !== this.o.pool)
      throw invalidArgument("pool", `this worker serves pool "${this.o.pool}", got "${pool}"`);
    // an expert named twice is one expert to load (and one slot), reported once
    const ids = [...new Map(this.checkKeys(keys, "experts").map((i) => [keyOf(i.layer, i.expert), i])).values()];
    if (ids.length > this.o.cache.capacity)
      throw invalidArgument("experts", `${ids.length} experts exceed the cache capacity of ${this.o.cache.capacity}`);
    const r = await this.o.cache.prefetch(ids);
    const { backend, cache } = this.o;
    if (backend.prefetch) {
      // Loaded ahead on the host: move them to the device tier too (the copy stream overlaps running batches), so
      // the batch that needs them finds them there. Answer once they are on the device.
      const prepared = ids.map((i) => cache.peek(i.layer, i.expert)).filter((p) => p !== undefined);
      const failed = await backend.prefetch(prepared);
      // Loaded on the host but not on the device: the answer must not say they are ready to run without a load.
      if (failed.length > 0) {
        const first = failed[0];
        const why = first instanceof Error ? first.message : String(first);
        const msg = `${failed.length} of ${prepared.length} experts failed to upload to the GPU: ${why}`;
        throw isSwitchyardError(first) && first.code !== "INTERNAL"
          ? new SwitchyardError(first.code, msg)
          : internal(msg);
      }
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
      cancels: true,
    };
  }
}

/** validateBatch's FAILED_PRECONDITION for `expert`, naming the batch's first slice that asks for it. */
function notServed(b: ValidBatch, expert: number): unknown {
  const i = b.slices.findIndex((s) => s.expert === expert && s.count > 0);
  return failedPrecondition(
    `expert ${expert} of layer ${b.layer} is no longer served by this worker (its placement plan changed)`,
    `slices[${i}].expert`,
  );
}

function parseId(k: string): ExpertKey {
  const [l, e] = k.split(":");
  return { layer: Number(l), expert: Number(e) };
}
