// A pool in another namespace than the router's: the operator names it "namespace/name" in the router's config
// (routerPoolName), while its workers run with --pool name and --metrics-pool namespace/name. The router must reach
// them under their own name, and select their metrics under the name it serves the pool by.

import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startWorker, type WorkerHandle } from "@switchyard/expert-worker";
import { generateCheckpoint, resolveRoutingPolicy } from "@switchyard/moe";
import { DType, encodeTensor } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointModel } from "./checkpoint-model.js";
import { Router } from "./router.js";

describe("a pool served under namespace/name", () => {
  let dir: string;
  let worker: WorkerHandle;
  let router: Router;
  const D = 16;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sy-poolns-"));
    await generateCheckpoint({ family: "mixtral", dir, layers: 1, hiddenSize: D, intermediateSize: 8, experts: 4 });
    worker = await startWorker({
      checkpoint: dir,
      pool: "mix",
      workerId: "w0",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend: "cpu",
      warm: false,
      log: () => {},
    });
    router = new Router({ statusIntervalMs: 0 });
    router.setPool({
      name: "team-a/mix",
      model: await CheckpointModel.open(dir),
      plan: { version: 1, pool: "mix", workers: ["w0"], replicas: [[[0], [0], [0], [0]]] },
      endpoints: { w0: `127.0.0.1:${worker.port}` },
      policy: resolveRoutingPolicy({}),
    });
    await router.refreshWorkers("team-a/mix");
  });
  afterAll(async () => {
    router?.close();
    await worker?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("answers a Forward through workers that know the pool by its own name", async () => {
    const hidden = encodeTensor(
      Float32Array.from({ length: 3 * D }, (_, i) => Math.sin(i)),
      [3, D],
      DType.FLOAT32,
    );
    const res = await router.forward({ pool: "team-a/mix", layer: 0, hidden, gate: undefined, requestId: 1n });
    expect(res.error).toBeUndefined();
    expect(res.hidden?.shape).toEqual([3, D]);
  });

  it("asks Prometheus for the workers' series under the name it serves the pool by", async () => {
    const queries: string[] = [];
    const prom: Server = createServer((req, res) => {
      queries.push(new URL(req.url ?? "/", "http://x").searchParams.get("query") ?? "");
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ status: "success", data: { resultType: "vector", result: [] } }));
    });
    await new Promise<void>((r) => prom.listen(0, "127.0.0.1", r));
    try {
      router.setPool({
        name: "team-a/mix",
        model: await CheckpointModel.open(dir),
        plan: { version: 3, pool: "mix", workers: ["w0"], replicas: [[[0], [0], [0], [0]]] },
        endpoints: { w0: `127.0.0.1:${worker.port}` },
        policy: resolveRoutingPolicy({
          loadSignals: {
            prometheusUrl: `http://127.0.0.1:${(prom.address() as AddressInfo).port}`,
            refreshMs: 50,
            timeoutMs: 2000, // a loaded CI host may take longer than a 50 ms round to answer
            queries: { queueDepth: 'sum by (worker) (switchyard_worker_queued_rows{pool="$pool"})' },
          },
        }),
      });
      const deadline = Date.now() + 5000;
      while (queries.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(queries[0]).toBe('sum by (worker) (switchyard_worker_queued_rows{pool="team-a/mix"})');
    } finally {
      router.setPool({
        name: "team-a/mix",
        model: await CheckpointModel.open(dir),
        plan: { version: 4, pool: "mix", workers: ["w0"], replicas: [[[0], [0], [0], [0]]] },
        endpoints: { w0: `127.0.0.1:${worker.port}` },
        policy: resolveRoutingPolicy({}),
      });
      await new Promise((r) => prom.close(r));
    }
  });

  it("refuses a plan that renames the pool's workers, naming the field", async () => {
    const setup = {
      name: "team-a/mix",
      model: await CheckpointModel.open(dir),
      plan: { version: 2, pool: "other", workers: ["w0"], replicas: [[[0], [0], [0], [0]]] },
      endpoints: { w0: `127.0.0.1:${worker.port}` },
      policy: resolveRoutingPolicy({}),
    };
    expect(() => router.setPool(setup)).toThrow(/pools\[team-a\/mix\]\.plan\.pool/);
  });
});
