// A pool in another namespace than the router's: the operator names it "namespace/name" in the router's config
// (routerPoolName), while its workers run with --pool name. The router must reach them under their own name.

import { mkdtemp, rm } from "node:fs/promises";
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
