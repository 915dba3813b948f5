// A worker that hangs (answers Status, never a batch) beside a healthy one. A worker batch's timeout is the latest
// deadline among its rows, so a batch to it can outlive every request whose rows went elsewhere: those must be
// answered as soon as their own rows are in, later requests must not be held behind it, and the requests that end
// while their rows are still out on it must keep counting against admission until the batch settles.
import { resolveRoutingPolicy } from "@switchyard/moe";
import { bytesToFloat32, DType, encodeTensor, type ForwardRequest } from "@switchyard/protocol";
import { afterEach, describe, expect, it } from "vitest";
import { CallerScope } from "./caller-scope.js";
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
  it("a request cancelled with its rows out keeps its tokens counted until its batch settles: memory stays bounded", async () => {
    const r = await start({ batching: { maxWaitMs: 0, maxBatchTokens: 4, maxQueueTokens: 4 } }, { oneWorker: true });
    const conn = r.workers("toy")[0];
    const codes: string[] = [];
    // a client that cancels in a loop (an engine whose stream resets), each request with an hour's deadline
    for (let i = 0; i < 10; i++) {
      const scope = new CallerScope();
      const answer = codeOf(r.forward(req(4, 0, BigInt(i)), Date.now() + 3_600_000, scope));
      await sleep(20);
      scope.close();
      codes.push(await answer);
    }
    // before the fix: 10 CANCELLED, 40 tokens (10 batches and their requests' rows) out on the hung worker for an hour
    expect(codes[0]).toBe("CANCELLED");
    expect(codes.slice(1)).toEqual(Array(9).fill("RESOURCE_EXHAUSTED"));
    expect(conn.outstandingTokens).toBe(4);
  });

  it("gives them back when that batch settles (here at its timeout)", async () => {
    const r = await start({ batching: { maxWaitMs: 0, maxBatchTokens: 4, maxQueueTokens: 4 } }, { oneWorker: true });
    const t0 = Date.now();
    const scope = new CallerScope();
    const a = codeOf(r.forward(req(4, 0, 1n), t0 + 600, scope)); // its batch times out at 600 ms
    await sleep(50);
    scope.close();
    expect(await a).toBe("CANCELLED");
    expect(await codeOf(r.forward(req(1, 0, 2n), Date.now() + 1000))).toBe("RESOURCE_EXHAUSTED");
    workers[0].mode = "ok";
    let code = "";
    while (Date.now() - t0 < 3000) {
      code = await codeOf(r.forward(req(1, 0, 3n), Date.now() + 1000));
      if (code !== "RESOURCE_EXHAUSTED") break;
      await sleep(20);
    }
    expect(code).toBe("ok");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(550); // not before the batch timed out
  });
});
