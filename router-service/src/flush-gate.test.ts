import { type GatingPolicy, resolveRoutingPolicy, softmaxTopK } from "@switchyard/moe";
import { DType, f32ToBf16, SwitchyardError } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import type { TokenRouting } from "./core/routing.js";
import { FlushGate, type GateHost, type GateItem, UNGATED } from "./flush-gate.js";
import type { PoolModel } from "./model.js";

// A toy gate: d = 2, E = 3, logit e of a token = (e + 1) * x0 - x1; top-1 with weight 1.
const D = 2;
const E = 3;

function toyModel(o: { offLoopFrom?: number; fail?: () => boolean } = {}) {
  const products: number[] = [];
  const logits = (h: Float32Array, T: number) => {
    const out = new Float32Array(T * E);
    for (let t = 0; t < T; t++) for (let e = 0; e < E; e++) out[t * E + e] = (e + 1) * h[t * D] - h[t * D + 1];
    return out;
  };
  const model: PoolModel = {
    family: "toy",
    layers: 1,
    experts: E,
    hiddenSize: D,
    hasShared: false,
    isMoeLayer: () => true,
    logits: (_l, h, T) => {
      products.push(T);
      return logits(h, T);
    },
    ...(o.offLoopFrom !== undefined
      ? {
          gatesOffLoop: (T: number) => T >= (o.offLoopFrom as number),
          logitsAsync: (_l: number, h: Float32Array | Uint16Array, T: number) => {
            products.push(T);
            const fail = o.fail?.() ?? false;
            return new Promise<Float32Array>((res, rej) =>
              setImmediate(() => (fail ? rej(new Error("gate failed")) : res(logits(h as Float32Array, T)))),
            );
          },
        }
      : {}),
    route(_l, lg, T): TokenRouting {
      const experts = new Int32Array(T);
      for (let t = 0; t < T; t++) {
        let best = 0;
        for (let e = 1; e < E; e++) if (lg[t * E + e] > lg[t * E + best]) best = e;
        experts[t] = best;
      }
      return { tokens: T, slots: 1, experts, weights: new Float32Array(T).fill(1) };
    },
    shared: () => null,
  };
  return { model, products };
}

interface TestItem extends GateItem {
  done: boolean;
  failed?: unknown;
}

/** A request of T tokens whose rows are [x0, x1] each (fp32, as they come on the wire). */
function item(T: number, x0: number, x1: number): TestItem {
  const rows = new Float32Array(T * D);
  for (let t = 0; t < T; t++) rows.set([x0, x1], t * D);
  return {
    tokens: T,
    layer: 0,
    dtype: DType.FLOAT32,
    hidden: new Uint8Array(rows.buffer),
    done: false,
    pendingGate: { slices: false, sharedScale: null },
    gateJob: null,
    routing: UNGATED,
    slots: 0,
    weights: new Float32Array(0),
    locations: new Int32Array(0),
  };
}

function gateOf(model: PoolModel) {
  const observed: number[] = [];
  let ahead = 0;
  const host: GateHost<TestItem> = {
    model: () => model,
    gating: (): GatingPolicy => resolveRoutingPolicy({}).gating,
    gateDuration: { observe: (s) => observed.push(s) },
    gateAheadTokens: { inc: (n) => (ahead += n) },
    fail: (it, e) => {
      it.failed = e;
      it.done = true;
    },
  };
  return { gate: new FlushGate(host), observed, aheadTokens: () => ahead };
}

const turn = () => new Promise<void>((r) => setImmediate(r));

describe("FlushGate", () => {
  it("gates a flush's requests in one product and gives each its rows", async () => {
    const { model, products } = toyModel();
    const { gate, observed } = gateOf(model);
    const a = item(2, 1, 0); // logits 1, 2, 3: expert 2
    const b = item(1, -1, 0); // logits -1, -2, -3: expert 0
    const given = item(1, 1, 0);
    given.pendingGate = null; // came with its own routing
    await gate.atFlush(0, [a, b, given]);
    expect(products).toEqual([3]);
    expect([...a.routing.experts]).toEqual([2, 2]);
    expect([...b.routing.experts]).toEqual([0]);
    expect(a.pendingGate).toBeNull();
    expect(a.locations).toHaveLength(2 * 1 * 2);
    expect(given.routing).toBe(UNGATED);
    expect(observed).toHaveLength(1);
  });

  it("starts the gate of the requests queued in one turn together, and the flush awaits it instead of gating again", async () => {
    const { model, products } = toyModel({ offLoopFrom: 1 });
    const { gate, aheadTokens } = gateOf(model);
    const a = item(1, 1, 0);
    const b = item(2, -1, 0);
    gate.startAhead(7, a);
    gate.startAhead(7, b);
    expect(products).toEqual([]); // at the end of the turn, not per request
    await turn();
    expect(products).toEqual([3]);
    expect(aheadTokens()).toBe(3);
    const late = item(1, 1, 0); // queued after the product started: the flush gates it
    await gate.atFlush(0, [a, b, late]);
    expect(products).toEqual([3, 1]);
    expect([...a.routing.experts]).toEqual([2]);
    expect([...b.routing.experts]).toEqual([0, 0]);
    expect([...late.routing.experts]).toEqual([2]);
  });

  it("does nothing ahead where one token's product stays on the event loop (the flush gates them together)", async () => {
    const { model, products } = toyModel({ offLoopFrom: 3 });
    const { gate, aheadTokens } = gateOf(model);
    const a = item(1, 1, 0);
    const b = item(2, 1, 0);
    gate.startAhead(1, a);
    gate.startAhead(1, b);
    await turn();
    expect(products).toEqual([]); // 3 tokens would go off the loop, but each product ahead would cost it a callback
    expect(aheadTokens()).toBe(0);
    await gate.atFlush(0, [a, b]);
    expect(products).toEqual([3]);
    expect([...b.routing.experts]).toEqual([2, 2]);
  });

  it("does nothing ahead for a model that gates only on the event loop", async () => {
    const { model, products } = toyModel();
    const { gate } = gateOf(model);
    const a = item(4, 1, 0);
    gate.startAhead(1, a);
    await turn();
    expect(products).toEqual([]);
    expect(a.gateJob).toBeNull();
  });

  it("fails the requests of a product started ahead that fails, and the flush goes on without them", async () => {
    let failures = 1;
    const { model } = toyModel({ offLoopFrom: 1, fail: () => failures-- > 0 });
    const { gate } = gateOf(model);
    const a = item(1, 1, 0);
    gate.startAhead(2, a);
    await turn();
    const b = item(1, 1, 0);
    await gate.atFlush(0, [a, b]); // does not reject: a's product failed a alone
    expect(a.done).toBe(true);
    expect(String(a.failed)).toMatch(/gate failed/);
    expect(b.done).toBe(false);
    expect([...b.routing.experts]).toEqual([2]);
  });

  it("has the model round the product for the requests' hidden dtype, and gates with the dtype it rounded to", async () => {
    const { model } = toyModel();
    const rounded: DType[] = [];
    const gatedWith: (DType | undefined)[] = [];
    model.roundLogits = (lg, hidden) => {
      rounded.push(hidden);
      for (let i = 0; i < lg.length; i++) lg[i] = Math.round(lg[i]); // a coarse "dtype": ties every logit within 0.5
      return DType.BFLOAT16;
    };
    const route = model.route.bind(model);
    model.route = (l, lg, T, g, dt) => {
      gatedWith.push(dt);
      return route(l, lg, T, g, dt);
    };
    const { gate } = gateOf(model);
    // bf16 requests (the batcher keys a flush by dtype)
    const bf16 = (x0: number, x1: number) => ({
      ...item(1, x0, x1),
      dtype: DType.BFLOAT16,
      hidden: new Uint8Array(f32ToBf16(Float32Array.from([x0, x1])).buffer),
    });
    const a = bf16(1.25, 3); // logits -1.75, -0.5, 0.75 -> -2, -0, 1: expert 2
    const b = bf16(0.25, 0.5); // logits -0.25, 0, 0.25 -> all 0: a tie, the first expert
    await gate.atFlush(0, [a, b]);
    expect(rounded).toEqual([DType.BFLOAT16]);
    expect(gatedWith).toEqual([DType.BFLOAT16]);
    expect([...a.routing.experts]).toEqual([2]);
    expect([...b.routing.experts]).toEqual([0]); // unrounded it would be expert 2
  });

  it("names `hidden` for a request whose hidden states make its router logits NaN, failing that request alone", async () => {
    const { model } = toyModel();
    // the gate's real selection: it refuses NaN logits naming logits[t, e], a field these callers never sent
    model.route = (_l, lg, T) => {
      const r = softmaxTopK(lg, E, { topK: 1, normTopKProb: true });
      return { tokens: T, slots: 1, experts: r.ids, weights: r.weights };
    };
    const { gate } = gateOf(model);
    const a = item(1, 1, 0);
    const b = item(2, 1, 0);
    new Float32Array(b.hidden.buffer)[1 * D + 1] = Number.NaN; // token 1, value 1
    const c = item(1, 1e38, -1e38); // finite, but its logits overflow to +Infinity
    await gate.atFlush(0, [a, b, c]);
    expect([...a.routing.experts]).toEqual([2]);
    expect(a.done).toBe(false);
    expect(b.failed).toBeInstanceOf(SwitchyardError);
    const eb = b.failed as SwitchyardError;
    expect(eb.code).toBe("INVALID_ARGUMENT");
    expect(eb.field).toBe("hidden[1, 1]");
    expect(eb.message).toMatch(/^hidden\[1, 1\]: must be finite, got NaN \(its router logits are NaN\)/);
    const ec = c.failed as SwitchyardError;
    expect(ec.field).toBe("hidden[0]");
    expect(ec.message).toMatch(/router logits are Infinity/);
    expect(ec.message).not.toMatch(/logits\[/);
  });

  it("skips requests finished while queued (their deadline passed)", async () => {
    const { model, products } = toyModel({ offLoopFrom: 1 });
    const { gate } = gateOf(model);
    const a = item(1, 1, 0);
    const b = item(2, 1, 0);
    gate.startAhead(3, a);
    a.done = true;
    gate.startAhead(3, b);
    await turn();
    expect(products).toEqual([2]);
    await gate.atFlush(0, [a, b]);
    expect(a.routing).toBe(UNGATED);
    expect([...b.routing.experts]).toEqual([2, 2]);
  });
});
