// ExpertBatch.timeout_ms: stream batches carry no gRPC deadline of their own, so the router tells the worker how
// long the flush's callers still wait, and the worker stops the batch when that passes.

import { resolveRoutingPolicy } from "@switchyard/moe";
import { DType, encodeTensor } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PoolModel } from "./model.js";
import { Router } from "./router.js";
import { FakeWorker } from "./testing/fake-worker.js";

const D = 4;
// One layer, two experts, top-1 on the first coordinate's sign: enough to reach a worker.
const tiny: PoolModel = {
  family: "tiny",
  layers: 1,
  experts: 2,
  hiddenSize: D,
  hasShared: false,
  isMoeLayer: () => true,
  logits: (_l, h, T) => Float32Array.from({ length: T * 2 }, (_, i) => (i % 2 === 0 ? h[(i >> 1) * D] : 0)),
  route: (_l, logits, T) => {
    const experts = Int32Array.from({ length: T }, (_, t) => (logits[t * 2] > 0 ? 0 : 1));
    const ranking = Int32Array.from({ length: T * 2 }, (_, i) => (i % 2 === 0 ? experts[i >> 1] : 1 - experts[i >> 1]));
    return { tokens: T, slots: 1, experts, weights: new Float32Array(T).fill(1), ranking };
  },
  shared: () => null,
};

describe("router → worker batch timeout", () => {
  const worker = new FakeWorker({ id: "w0", expert: (_l, _e, x) => x });
  let router: Router;
  beforeAll(async () => {
    await worker.start();
    router = new Router({ statusIntervalMs: 0 });
    router.setPool({
      name: "tiny",
      model: tiny,
      plan: { version: 1, pool: "tiny", workers: ["w0"], replicas: [[[0], [0]]] },
      endpoints: { w0: `127.0.0.1:${worker.port}` },
      policy: resolveRoutingPolicy({}),
    });
  });
  afterAll(() => {
    router?.close();
    worker.stop();
  });

  it("each ExpertBatch carries the flush's remaining deadline in timeout_ms", async () => {
    const h = Float32Array.from({ length: 3 * D }, (_, i) => (i % 3) - 1);
    for (const budgetMs of [800, 4000]) {
      const before = worker.seen.length;
      const t0 = Date.now();
      const res = await router.forward(
        { pool: "tiny", layer: 0, hidden: encodeTensor(h, [3, D], DType.FLOAT32), gate: undefined, requestId: 1n },
        t0 + budgetMs,
      );
      expect(res.error).toBeUndefined();
      const sent = worker.seen.slice(before);
      expect(sent.length).toBeGreaterThan(0);
      for (const b of sent) {
        // Remaining, not the whole budget minus nothing nor a constant: at most the budget, at least what is left.
        expect(b.timeoutMs).toBeLessThanOrEqual(budgetMs);
        expect(b.timeoutMs).toBeGreaterThanOrEqual(budgetMs - (Date.now() - t0) - 1);
      }
    }
  });
});
