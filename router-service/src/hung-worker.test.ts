// A worker that hangs (answers Status, never a batch) beside a healthy one. A worker batch's timeout is the latest
// deadline among its rows, so a batch to it can outlive every request whose rows went elsewhere: those must be
// answered as soon as their own rows are in, later requests must not be held behind it (not even when nothing of its
// flush is answered), and the requests that end while their rows are still out on it keep counting against admission
// until the batch settles, which it does at the router (abandoned) once none of its requests is live.
import { resolveRoutingPolicy } from "@switchyard/moe";
import { bytesToFloat32, DType, encodeTensor, type ForwardRequest } from "@switchyard/protocol";
import { afterEach, describe, expect, it } from "vitest";
import { CallerScope } from "./caller-scope.js";
import { HOLD_CAP_MS } from "./core/batcher.js";
import { Router } from "./router.js";
import { FakeWorker } from "./testing/fake-worker.js";
import { preRoutedToy } from "./testing/toy-model.js";

const D = 4;
const toy = preRoutedToy(2, D);
/** Expert e maps x -> (e + 1) * x. */
const expertFn = (_l: number, e: number, x: Float32Array) => x.map((v) => (e + 1) * v);

/** `T` tokens, each routed to `expert` with weight 1; token t's row is t + 1 everywhere. */
function req(T: number, expert: number, id = 0n): ForwardRequest {
  return {
    pool: "toy",
    layer: 0,
    requestId: id,
    hidden: encodeTensor(
      Float32Array.from({ length: T * D }, (_, i) => Math.floor(i / D) + 1),
      [T, D],
      DType.FLOAT32,
    ),
    gate: {
      $case: "assignment",
      value: {
        expertIds: encodeTensor(new Int32Array(T).fill(expert), [T, 1], DType.INT32),
        weights: encodeTensor(new Float32Array(T).fill(1), [T, 1], DType.FLOAT32),
      },
    },
  } as ForwardRequest;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { code?: string }) => e.code ?? String(e),
  );

const workers: FakeWorker[] = [];
let router: Router | null = null;
afterEach(() => {
  router?.close();
  router = null;
  for (const w of workers.splice(0)) w.stop();
});

/** w0 healthy and holding expert 0, w1 hung and holding expert 1 (`oneWorker`: both on w0, which hangs). */
async function start(policy: unknown, o: { oneWorker?: boolean } = {}): Promise<Router> {
  const ids = o.oneWorker ? ["w0"] : ["w0", "w1"];
  for (const id of ids) workers.push(new FakeWorker({ id, expert: expertFn }));
  for (const w of workers) await w.start();
  workers[workers.length - 1].mode = "hang";
  const r = new Router({ statusIntervalMs: 0, dedupMinBytes: Number.POSITIVE_INFINITY });
  r.setPool({
    name: "toy",
    model: toy,
    plan: { version: 1, pool: "toy", workers: ids, replicas: [o.oneWorker ? [[0], [0]] : [[0], [1]]] },
    endpoints: Object.fromEntries(workers.map((w) => [w.o.id, `127.0.0.1:${w.port}`])),
    policy: resolveRoutingPolicy(policy),
  });
  router = r;
  return r;
}

describe("a flush with a batch on a hung worker", () => {
  it("answers a request whose rows are all in at once, and holds no later request behind the hung batch", async () => {
    const r = await start({ batching: { maxWaitMs: 20, flushesInFlight: 1 } });
    const t0 = Date.now();
    // one flush: A's rows go to the healthy w0, B's to the hung w1 (B's deadline is the later one: its batch's)
    const a = r.forward(req(2, 0, 1n), t0 + 1500);
    const b = codeOf(r.forward(req(2, 1, 2n), t0 + 4000));
    const res = await a; // before the fix: DEADLINE_EXCEEDED at 1.5 s, its answer lost behind B's batch
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true)).toEqual(
      Float32Array.from([1, 1, 1, 1, 2, 2, 2, 2]), // expert 0: x -> x
    );
    // A later request of the key goes out after its maxWait, not held 250 ms (HOLD_CAP_MS) behind B's flush
    const t1 = Date.now();
    await r.forward(req(1, 0, 3n), t1 + 1500);
    expect(Date.now() - t1).toBeLessThan(200);
    r.close(); // ends B (its batch would wait for its deadline)
    expect(await b).not.toBe("ok");
  });

  it("holds no later request behind a flush with no answer at all (every row on the hung worker) past HOLD_CAP_MS", async () => {
    const r = await start({ batching: { maxWaitMs: 2, flushesInFlight: 1 } });
    await r.forward(req(1, 0, 1n), Date.now() + 1500); // connection set-up, out of the timings below
    // B's flush: its one row on the hung w1, nothing of it ever answered
    const b = codeOf(r.forward(req(1, 1, 2n), Date.now() + 60_000));
    await sleep(HOLD_CAP_MS + 50);
    const took: number[] = [];
    for (let i = 0; i < 4; i++) {
      const t = performance.now();
      await r.forward(req(1, 0, BigInt(3 + i)), Date.now() + 1500);
      took.push(performance.now() - t);
    }
    // before the fix: ~250 ms each (held HOLD_CAP_MS behind B's flush, for as long as B lives)
    expect(Math.max(...took)).toBeLessThan(100);
    r.close();
    expect(await b).not.toBe("ok");
  });

  it("leaves no timer of its flush behind to keep the process alive", async () => {
    const r = await start({ batching: { maxWaitMs: 5 } });
    await r.forward(req(1, 0, 1n), Date.now() + 1500); // connection set-up
    await sleep(HOLD_CAP_MS + 50); // (whatever its flush left has run)
    const timers = () => process.getActiveResourcesInfo().filter((x) => x === "Timeout").length;
    const before = timers();
    // A is answered after ~100 ms (w0 slowed here), B's batch hangs until its deadline at 150 ms: the flush would
    // stop holding its key at as long again as A took (~200 ms), after it has ended
    const c0 = r.workers("toy")[0];
    const run = c0.run.bind(c0);
    c0.run = (...a: Parameters<typeof run>) => run(...a).then((x) => sleep(100).then(() => x));
    const a = r.forward(req(1, 0, 2n), Date.now() + 2000);
    const b = codeOf(r.forward(req(1, 1, 3n), Date.now() + 150));
    await a;
    expect(await b).toBe("DEADLINE_EXCEEDED");
    await sleep(10);
    // before the fix: one more, the flush's early-release timer, still pending ~40 ms after the flush ended
    expect(timers()).toBeLessThanOrEqual(before);
  });

  it("overflow 'queue': a request's later round goes once its earlier rows are in, and it is answered after its last", async () => {
    // capacity 1 a round per expert (ceil(0.5 * 3 / 2)): Q's two tokens for expert 0 go in rounds 0 and 1, B's row
    // (expert 1, on the hung w1) in round 0
    const r = await start({ batching: { maxWaitMs: 20 }, gating: { capacityFactor: 0.5, overflow: "queue" } });
    const t0 = Date.now();
    const q = r.forward(req(2, 0, 1n), t0 + 1500);
    const b = codeOf(r.forward(req(1, 1, 2n), t0 + 4000));
    const res = await q; // before the fix: round 1 waited for B's batch, and Q failed DEADLINE_EXCEEDED at 1.5 s
    expect(Date.now() - t0).toBeLessThan(1000);
    // both tokens' rows are in its answer: it was not answered after round 0
    expect(bytesToFloat32(res.hidden!.data, DType.FLOAT32, true)).toEqual(Float32Array.from([1, 1, 1, 1, 2, 2, 2, 2]));
    expect(workers[0].seen.length).toBe(2); // one batch a round
    r.close();
    expect(await b).not.toBe("ok");
  });
});

describe("admission while a worker hangs", () => {
  it("a request cancelled with its rows out gives its tokens back at the cancel: its batch is abandoned, nothing held", async () => {
    const r = await start({ batching: { maxWaitMs: 0, maxBatchTokens: 4, maxQueueTokens: 4 } }, { oneWorker: true });
    const conn = r.workers("toy")[0];
    const pending = (conn as unknown as { pending: Map<number, unknown> }).pending;
    const codes: string[] = [];
    // a client that cancels in a loop (an engine whose stream resets), each request with an hour's deadline
    for (let i = 0; i < 10; i++) {
      const scope = new CallerScope();
      const answer = codeOf(r.forward(req(4, 0, BigInt(i)), Date.now() + 3_600_000, scope));
      await sleep(20);
      expect(pending.size).toBe(1); // its batch is out on the hung worker
      scope.close();
      codes.push(await answer);
    }
    // before the fix: 1 CANCELLED, then 9 RESOURCE_EXHAUSTED: the first batch kept its 4 tokens for the hour
    expect(codes).toEqual(Array(10).fill("CANCELLED"));
    // memory stays bounded all the same: the router holds no batch of them (none pending, none outstanding)
    expect(pending.size).toBe(0);
    expect(conn.outstandingTokens).toBe(0);
    expect(await admitted(r)).toBe(0);
  });

  it("one cancelled request on a stuck worker does not lock the pool: a healthy worker's requests are admitted", async () => {
    // w0 healthy (expert 0), w1 hung (expert 1); the pool admits 8 tokens
    const r = await start({ batching: { maxWaitMs: 2, maxBatchTokens: 8, maxQueueTokens: 8 } });
    const scope = new CallerScope();
    const a = codeOf(r.forward(req(8, 1, 1n), Date.now() + 3_600_000, scope));
    await sleep(50);
    expect(await admitted(r)).toBe(8);
    scope.close();
    expect(await a).toBe("CANCELLED");
    // before the fix: RESOURCE_EXHAUSTED for the hour (A's batch held the pool's 8 tokens, w1 answering Status)
    expect(await codeOf(r.forward(req(1, 0, 2n), Date.now() + 1000))).toBe("ok");
    expect(await admitted(r)).toBe(0);
  });

  it("an ended request sharing a batch with a live one counts until that one ends too (its rows are still held)", async () => {
    const r = await start({ batching: { maxWaitMs: 5, maxBatchTokens: 8, maxQueueTokens: 8 } }, { oneWorker: true });
    const t0 = Date.now();
    const scope = new CallerScope();
    // one flush, one batch on the hung worker: A (1 token, an hour) and B (7 tokens, 300 ms)
    const a = codeOf(r.forward(req(1, 0, 1n), t0 + 3_600_000, scope));
    const b = codeOf(r.forward(req(7, 0, 2n), t0 + 300));
    expect(await b).toBe("DEADLINE_EXCEEDED");
    expect(await codeOf(r.forward(req(1, 0, 3n), Date.now() + 1000))).toBe("RESOURCE_EXHAUSTED");
    expect(await admitted(r)).toBe(8);
    scope.close(); // the batch's last live request: it is abandoned, and both give their tokens back
    expect(await a).toBe("CANCELLED");
    expect(await admitted(r)).toBe(0);
    // before the fix: RESOURCE_EXHAUSTED until A's hour was up; now admitted (and ended by its own deadline)
    expect(await codeOf(r.forward(req(1, 0, 4n), Date.now() + 100))).toBe("DEADLINE_EXCEEDED");
    workers[0].mode = "ok";
    expect(await codeOf(r.forward(req(1, 0, 5n), Date.now() + 1000))).toBe("ok");
  });
});

/** The pool's admitted tokens as its metric says (switchyard_router_admitted_tokens). */
async function admitted(r: Router): Promise<number> {
  r.sampleGauges();
  const text = await r.metrics.registry.metrics();
  const m = /^switchyard_router_admitted_tokens\{pool="toy"\} (\S+)$/m.exec(text);
  if (!m) throw new Error("no switchyard_router_admitted_tokens series for pool toy");
  return Number(m[1]);
}
