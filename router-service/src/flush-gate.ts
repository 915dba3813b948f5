// The gate of requests that came with hidden states only (no router logits, no assignment): one gate product over
// many requests' tokens, because the native gate reads each panel of the gate's weights once for every token of a
// call (router-service/native/src/logits.cc): a flush of 20 decode tokens reads DeepSeek-V3's 7.3 MB gate once, not
// 20 times. The product runs at the flush, or is started while the requests wait for it (startAhead).

import type { GatingPolicy } from "@switchyard/moe";
import { DType, decodeTensor, invalidArgument } from "@switchyard/protocol";
import { type TokenRouting, withSharedSlices } from "./core/routing.js";
import type { PoolModel } from "./model.js";

/** What forward() knew of a request whose gate runs from its hidden states. */
export interface PendingGate {
  /** The shared expert's slices go on the workers (withSharedSlices), with this per-token scale (null: weight 1). */
  slices: boolean;
  sharedScale: Float32Array | null;
}

/** What the gate reads and fills in of a queued request (router.ts Item). */
export interface GateItem {
  readonly tokens: number;
  readonly layer: number;
  readonly dtype: DType;
  /** Raw hidden rows in the request dtype, [tokens, d]. */
  readonly hidden: Uint8Array;
  readonly done: boolean;
  /**
   * Set while the gate is still to be computed from the hidden states; `routing` / `slots` / `weights` /
   * `locations` are filled in then (setRouting).
   */
  pendingGate: PendingGate | null;
  /**
   * The gate product that covers this item once started: ahead of the flush while the request waits in the batcher
   * (startAhead), else by the flush itself. The flush awaits it; one started ahead never rejects (it fails its own
   * items).
   */
  gateJob: Promise<void> | null;
  routing: TokenRouting;
  slots: number;
  weights: Float32Array;
  locations: Int32Array;
}

/** The routing of an item whose gate has not run yet (no slots: nothing to place or combine). */
export const UNGATED: TokenRouting = {
  tokens: 0,
  slots: 0,
  experts: new Int32Array(0),
  weights: new Float32Array(0),
};

export function setRouting(it: GateItem, r: TokenRouting): void {
  it.routing = r;
  it.slots = r.slots;
  it.weights = r.weights;
  it.locations = new Int32Array(it.tokens * r.slots * 2).fill(-1);
}

/** What a pool gives its gate: the model and policy of the moment, the metrics, and how a request is failed. */
export interface GateHost<T extends GateItem> {
  model(): PoolModel;
  gating(): GatingPolicy;
  /** Seconds a flush waited for its requests' gate. */
  readonly gateDuration: { observe(seconds: number): void };
  /** Tokens whose gate started ahead of their flush. */
  readonly gateAheadTokens: { inc(tokens: number): void };
  fail(item: T, err: unknown): void;
}

/** Queued requests whose gate has not started yet, for one batcher key. */
interface AheadQueue<T> {
  items: T[];
  timer: NodeJS.Immediate | null;
}

export class FlushGate<T extends GateItem> {
  private readonly ahead = new Map<number, AheadQueue<T>>();

  constructor(private readonly host: GateHost<T>) {}

  /**
   * Gates the flush's requests that came with hidden states only, in one gate product over all their tokens.
   * Requests whose gate started ahead of the flush are awaited, not gated again. Rejects when the product itself
   * fails (the flush then fails its requests).
   */
  async atFlush(layer: number, items: T[]): Promise<void> {
    const own: T[] = [];
    const ahead: Promise<void>[] = [];
    for (const it of items) {
      if (!it.pendingGate || it.done) continue;
      if (it.gateJob === null) own.push(it);
      else if (!ahead.includes(it.gateJob)) ahead.push(it.gateJob);
    }
    if (own.length === 0 && ahead.length === 0) return;
    const started = performance.now();
    try {
      const mine = own.length > 0 ? this.gate(layer, own) : null;
      for (const it of own) it.gateJob = mine;
      if (ahead.length === 0) await mine;
      else await Promise.all(mine ? [mine, ...ahead] : ahead);
    } finally {
      this.host.gateDuration.observe((performance.now() - started) / 1000);
    }
  }

  /**
   * Starts the gate of a queued request (Batcher onQueued) with the others of its key queued in the same turn of the
   * event loop: the product then runs on the gate's threads while the request waits (maxWait, or held behind running
   * flushes), where at the flush it came after the wait. The price is smaller products (the gate's weights are read
   * once per product, not once per flush) and a callback per product on the event loop. On the H200 host:
   * - DeepSeek-V3 full, 128 sequences: a flush's gate wait of 2.27-2.59 ms against 3.06-3.44 and a router p50 of
   *   12.63-13.46 ms against 13.57-14.35, for the router's CPU at 2.56-2.62 cores against 2.30-2.38;
   * - Qwen3-30B-A3B full, 256 sequences, where the event loop is the bound: 5586-6186 tokens/s against 6344-6747.
   * So only where a single token's product already goes off the event loop (DeepSeek-V3: 1.8 M multiply-adds a
   * token; Qwen3-30B-A3B's 0.26 M take 4 tokens, Mixtral's 32 K take 32): there the products started ahead cost the
   * loop nothing it would not pay at the flush (bench/results/h200-moe.md). Gating only the requests held behind
   * running flushes did not pay: the flush still gated the rest after the wait.
   */
  startAhead(key: number, item: T): void {
    if (item.pendingGate === null || !this.host.model().gatesOffLoop?.(1)) return;
    let q = this.ahead.get(key);
    if (!q) {
      q = { items: [], timer: null };
      this.ahead.set(key, q);
    }
    q.items.push(item);
    if (q.timer === null) {
      const queue = q;
      queue.timer = setImmediate(() => {
        queue.timer = null;
        this.startQueued(queue);
      });
    }
  }

  private startQueued(queue: AheadQueue<T>): void {
    // The flush may have taken some already (it gates them itself), or their deadline passed.
    const chunk = queue.items.filter((i) => i.pendingGate !== null && !i.done && i.gateJob === null);
    queue.items = [];
    if (chunk.length === 0) return;
    let T = 0;
    for (const i of chunk) T += i.tokens;
    const job = this.gate(chunk[0].layer, chunk).catch((e) => {
      for (const i of chunk) this.host.fail(i, e);
    });
    for (const i of chunk) i.gateJob = job;
    this.host.gateAheadTokens.inc(T);
  }

  /**
   * One gate product over the items' tokens (off the event loop where the product is large enough: logitsAsync),
   * then their routing. bf16 rows go as they came where the model takes them, else widened. A request whose routing
   * fails is rejected alone.
   */
  private async gate(layer: number, pending: T[]): Promise<void> {
    const m = this.host.model();
    const d = m.hiddenSize;
    let T = 0;
    for (const it of pending) T += it.tokens;
    const bf16 = m.logitsBf16 !== undefined && pending.every((i) => i.dtype === DType.BFLOAT16);
    const x = bf16 ? concatBf16(pending, T, d) : concatF32(pending, T, d);
    const job = m.logitsAsync?.(layer, x, T);
    let logits = job ? await job : x instanceof Uint16Array ? (m.logitsBf16?.(layer, x, T) ?? null) : null;
    logits ??= m.logits(layer, x instanceof Float32Array ? x : concatF32(pending, T, d), T);
    // One dtype for all: the batcher keys a flush, and the requests gated ahead, by (layer, dtype).
    const logitsDtype = m.roundLogits?.(logits, pending[0].dtype) ?? DType.FLOAT32;
    const E = m.experts;
    const gating = this.host.gating();
    // The whole call in one gate selection (a native gate's call costs ~1.5 us, a decode request's whole selection
    // at Mixtral); each request takes its rows. If it fails (a NaN in some request's hidden states), each request is
    // gated alone, so that only the bad one is rejected.
    let all: TokenRouting | null = null;
    try {
      all = m.route(layer, logits, T, gating, logitsDtype);
    } catch {
      all = null;
    }
    let t0 = 0;
    for (const it of pending) {
      const own = logits.subarray(t0 * E, (t0 + it.tokens) * E);
      const rows = all ? routingRows(all, t0, it.tokens, E) : null;
      t0 += it.tokens;
      if (it.done) continue; // its deadline passed while the gate ran
      const g = it.pendingGate as PendingGate;
      try {
        // The gate names the logits it refuses, but these were the router's own product: name the caller's hidden.
        const bad = rows ? null : hiddenFault(it, own, E, d);
        if (bad) throw bad;
        const gated = rows ?? m.route(layer, own, it.tokens, gating, logitsDtype);
        setRouting(it, g.slices ? withSharedSlices(gated, E, m.sharedSlices ?? 0, g.sharedScale) : gated);
        it.pendingGate = null;
      } catch (e) {
        this.host.fail(it, e);
      }
    }
  }
}

/**
 * Where a request's router logits are NaN or +Infinity (the gate refuses them), the error for the hidden state that
 * made them: the first non-finite value of that token's row, else the row itself (finite values whose product
 * overflows). null when the logits are all finite or -Infinity.
 */
function hiddenFault(it: GateItem, logits: Float32Array, experts: number, d: number): Error | null {
  let i = 0;
  while (i < logits.length && !(Number.isNaN(logits[i]) || logits[i] === Number.POSITIVE_INFINITY)) i++;
  if (i === logits.length) return null;
  const t = Math.floor(i / experts);
  const why = `its router logits are ${logits[i]}`;
  const row = hiddenAsF32(it, d).subarray(t * d, (t + 1) * d);
  const j = row.findIndex((v) => !Number.isFinite(v));
  if (j >= 0) return invalidArgument(`hidden[${t}, ${j}]`, `must be finite, got ${row[j]} (${why})`);
  return invalidArgument(`hidden[${t}]`, `${why}: its values overflow the gate's product`);
}

/** Tokens [t0, t0 + tokens) of a routing, as views of its arrays. */
function routingRows(r: TokenRouting, t0: number, tokens: number, experts: number): TokenRouting {
  const k = r.slots;
  return {
    tokens,
    slots: k,
    experts: r.experts.subarray(t0 * k, (t0 + tokens) * k),
    weights: r.weights.subarray(t0 * k, (t0 + tokens) * k),
    ranking: r.ranking?.subarray(t0 * experts, (t0 + tokens) * experts),
  };
}

/**
 * A Uint16Array over bf16 bytes: a view where they sit at an even offset, else an aligned copy (a protobuf field's
 * bytes often start at an odd one; a copy of the bits is still cheaper than widening them).
 */
function u16(b: Uint8Array): Uint16Array {
  if (b.byteOffset % 2 === 0) return new Uint16Array(b.buffer, b.byteOffset, b.byteLength >> 1);
  const c = new Uint8Array(b.byteLength);
  c.set(b);
  return new Uint16Array(c.buffer, 0, b.byteLength >> 1);
}

/** The items' bf16 rows one after another (a view of the only one's where it can be). */
function concatBf16(items: GateItem[], T: number, d: number): Uint16Array {
  if (items.length === 1) return u16(items[0].hidden);
  const x = new Uint16Array(T * d);
  // bytes to bytes: a request's rows often sit at an odd offset of its message, where a Uint16Array view would need
  // a copy of its own first (292 ms of a 12 s Qwen3 load in the 02:54 profile)
  const bytes = new Uint8Array(x.buffer);
  let off = 0;
  for (const it of items) {
    bytes.set(it.hidden.subarray(0, it.tokens * d * 2), off);
    off += it.tokens * d * 2;
  }
  return x;
}

/** The items' rows as fp32, one after another (a view of the only one's where it came as aligned fp32). */
function concatF32(items: GateItem[], T: number, d: number): Float32Array {
  if (items.length === 1) return hiddenAsF32(items[0], d);
  const x = new Float32Array(T * d);
  let off = 0;
  for (const it of items) {
    x.set(hiddenAsF32(it, d), off);
    off += it.tokens * d;
  }
  return x;
}

/** An item's hidden rows as fp32 (a view when they came as aligned fp32). */
function hiddenAsF32(it: GateItem, d: number): Float32Array {
  const data = Buffer.from(it.hidden.buffer, it.hidden.byteOffset, it.hidden.byteLength); // a view, not a copy
  return decodeTensor({ dtype: it.dtype, shape: [it.tokens, d], data }, "hidden").values as Float32Array;
}
