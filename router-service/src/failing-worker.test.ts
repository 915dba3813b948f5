// Workers that fail the router's batches beside a healthy replica. One that answers Status but fails every batch,
// while the pool's Prometheus load signals are fresh: Prometheus has no run time for it (it finishes no run), and the
// replica choice must still see the router's failure penalty, or it sends every flush to it first (a lost round trip
// each). One that refuses them as INVALID_ARGUMENT: the router built the batch, so it is the worker's state.
import { createServer, type Server } from "node:http";
import { resolveRoutingPolicy } from "@switchyard/moe";
import {
  DType,
  type ExpertBatch,
  type ExpertResult,
  encodeTensor,
  type ForwardRequest,
  invalidArgument,
  unavailable,
} from "@switchyard/protocol";
import { afterEach, describe, expect, it } from "vitest";
import { Router } from "./router.js";
import { FakeWorker } from "./testing/fake-worker.js";
import { preRoutedToy } from "./testing/toy-model.js";

const D = 8;
const toy = preRoutedToy(2, D);

class Failing extends FakeWorker {
  tried = 0;
  override run(_b: ExpertBatch): ExpertResult {
    this.tried++;
    throw unavailable(`${this.o.id} cannot take batches`);
  }
}

const req = (i: number): ForwardRequest =>
  ({
    pool: "toy",
    layer: 0,
    requestId: BigInt(i),
    hidden: encodeTensor(new Float32Array(D).fill(1), [1, D], DType.FLOAT32),
    gate: {
      $case: "assignment",
      value: {
        expertIds: encodeTensor(Int32Array.of(0), [1, 1], DType.INT32),
        weights: encodeTensor(Float32Array.of(1), [1, 1], DType.FLOAT32),
      },
    },
  }) as ForwardRequest;

let prom: Server | null = null;
let router: Router | null = null;
const workers: FakeWorker[] = [];
afterEach(() => {
  router?.close();
  for (const w of workers.splice(0)) w.stop();
  prom?.close();
  router = prom = null;
});

describe("a worker that fails every batch, with fresh Prometheus signals", () => {
  it("is not chosen first for every flush (its failure penalty counts though Prometheus has no run time for it)", async () => {
    // Prometheus: both idle, a run time for w1 only (w0 finished no run in the rate window)
    prom = createServer((q, res) => {
      const url = decodeURIComponent(q.url ?? "");
      const result = url.includes("queued")
        ? [
            { metric: { worker: "w0" }, value: [0, "0"] },
            { metric: { worker: "w1" }, value: [0, "0"] },
          ]
        : [{ metric: { worker: "w1" }, value: [0, "0.002"] }];
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ status: "success", data: { resultType: "vector", result } }));
    });
    await new Promise<void>((r) => prom?.listen(0, "127.0.0.1", r));
    const failing = new Failing({ id: "w0", expert: (_l, _e, x) => x });
    workers.push(failing, new FakeWorker({ id: "w1", expert: (_l, _e, x) => x }));
    for (const w of workers) await w.start();
    router = new Router({ statusIntervalMs: 0, dedupMinBytes: Number.POSITIVE_INFINITY, gateAhead: false });
    const port = (prom.address() as { port: number }).port;
    router.setPool({
      name: "toy",
      model: toy,
      plan: {
        version: 1,
        pool: "toy",
        workers: ["w0", "w1"],
        replicas: [
          [
            [0, 1],
            [0, 1],
          ],
        ],
      },
      endpoints: Object.fromEntries(workers.map((w) => [w.o.id, `127.0.0.1:${w.port}`])),
      policy: resolveRoutingPolicy({
        loadSignals: { prometheusUrl: `http://127.0.0.1:${port}`, refreshMs: 50, stalenessMs: 5000, timeoutMs: 2000 },
      }),
    });
    await router.refreshWorkers("toy");
    const r = router;
    const end = Date.now() + 5000;
    while (r.signalsStale("toy")) {
      if (Date.now() > end) throw new Error("the Prometheus signals never became fresh");
      await new Promise((res) => setTimeout(res, 20));
    }
    for (let i = 0; i < 20; i++) {
      const a = await r.forward(req(i), Date.now() + 5000);
      expect(a.hidden?.shape).toEqual([1, D]);
    }
    expect(r.signalsStale("toy")).toBe(false);
    // before the fix: 20 of 20 flushes tried w0 first
    expect(failing.tried).toBeLessThanOrEqual(3);
  });
});

describe("a worker that refuses the router's batches as INVALID_ARGUMENT (its checkpoint disagrees with the router's)", () => {
  it("sends the rows to another replica and counts against the worker; with none, FAILED_PRECONDITION with its words", async () => {
    class Refusing extends FakeWorker {
      refusals = 0;
      override run(_b: ExpertBatch): ExpertResult {
        this.refusals++;
        throw invalidArgument("tokens.shape[1]", "expected hidden size 16, got 8");
      }
    }
    const refusing = new Refusing({ id: "w0", expert: (_l, _e, x) => x });
    workers.push(refusing, new FakeWorker({ id: "w1", expert: (_l, _e, x) => x }));
    for (const w of workers) await w.start();
    router = new Router({ statusIntervalMs: 0, dedupMinBytes: Number.POSITIVE_INFINITY, gateAhead: false });
    const r = router;
    const setPool = (replicas: number[][], version: number) =>
      r.setPool({
        name: "toy",
        model: toy,
        plan: { version, pool: "toy", workers: ["w0", "w1"], replicas: [replicas] },
        endpoints: Object.fromEntries(workers.map((w) => [w.o.id, `127.0.0.1:${w.port}`])),
        policy: resolveRoutingPolicy({}),
      });
    setPool(
      [
        [0, 1],
        [0, 1],
      ],
      1,
    );
    await r.refreshWorkers("toy");
    for (let i = 0; i < 20; i++) expect((await r.forward(req(i), Date.now() + 5000)).hidden?.shape).toEqual([1, D]);
    // it counts against w0, so the choice does not send it every flush first (a lost round trip each)
    expect(refusing.refusals).toBeLessThanOrEqual(3);
    setPool([[0], [0, 1]], 2); // expert 0 on w0 alone
    const err = (await r.forward(req(99), Date.now() + 5000).catch((e) => e)) as Error & { code?: string };
    // every replica refused the batch itself: not UNAVAILABLE, which would tell the caller to send it again
    expect(err.code).toBe("FAILED_PRECONDITION");
    expect(err.message).toMatch(/w0: .*expected hidden size 16, got 8/);
  });
});
