// A router process's app over fake workers and a generated Mixtral-shaped checkpoint, for the tests of what sits in
// front of Router.forward (the gRPC and TCP servers, their clients).

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint } from "@switchyard/moe";
import { type RouterApp, startRouterApp } from "../app.js";
import { type ExpertFn, FakeWorker } from "./fake-worker.js";

export interface TestRouter {
  app: RouterApp;
  workers: FakeWorker[];
  /** Everything the app logged. */
  logs: string[];
  close(): Promise<void>;
}

/**
 * Pool "p": one layer of `experts` experts at hidden size `hidden`, half on each of two fake workers computing
 * `expert`; served on free ports (the engines' data path too).
 */
export async function startTestRouter(o: {
  hidden: number;
  experts: number;
  expert: ExpertFn;
  policy?: unknown;
  /** The HTTP port (/metrics, /readyz, /pools): 0 for a free one; default off. */
  metricsPort?: number | null;
}): Promise<TestRouter> {
  const dir = await mkdtemp(join(tmpdir(), "sy-test-router-"));
  const workers = [new FakeWorker({ id: "w0", expert: o.expert }), new FakeWorker({ id: "w1", expert: o.expert })];
  const logs: string[] = [];
  await generateCheckpoint({
    family: "mixtral",
    dir: join(dir, "ckpt"),
    layers: 1,
    hiddenSize: o.hidden,
    intermediateSize: 8,
    experts: o.experts,
  });
  for (const w of workers) await w.start();
  const plan = {
    version: 1,
    pool: "p",
    workers: ["w0", "w1"],
    replicas: [Array.from({ length: o.experts }, (_, e) => [e % 2])],
  };
  await writeFile(join(dir, "plan.json"), JSON.stringify(plan));
  await writeFile(
    join(dir, "router.json"),
    JSON.stringify({
      pools: [
        {
          name: "p",
          checkpoint: join(dir, "ckpt"),
          planFile: join(dir, "plan.json"),
          endpoints: { w0: `127.0.0.1:${workers[0]?.port}`, w1: `127.0.0.1:${workers[1]?.port}` },
          ...(o.policy !== undefined ? { policy: o.policy } : {}),
        },
      ],
    }),
  );
  const app = await startRouterApp({
    config: join(dir, "router.json"),
    port: 0,
    metricsPort: o.metricsPort ?? null,
    dataPort: 0,
    host: "127.0.0.1",
    log: (l) => logs.push(l),
  });
  return {
    app,
    workers,
    logs,
    async close() {
      await app.close();
      for (const w of workers) w.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
