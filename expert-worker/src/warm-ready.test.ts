// A worker warms its served experts before it reports ready, over real gRPC and HTTP: while the checkpoint reads are
// held back, the liveness service ("") answers SERVING and the readiness service (switchyard.v1.ExpertWorker) and
// /readyz do not; once they finish, both do and Status lists every served expert resident. A checkpoint that cannot
// give one of them keeps the worker not ready, with the expert named.

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata } from "@grpc/grpc-js";
import { generateCheckpoint, openCheckpoint } from "@switchyard/moe";
import { ExpertWorkerClient, type WorkerStatus } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ExpertSource } from "./core.js";
import { health } from "./testing.js";
import { checkpointSource, startWorker, WORKER_SERVICE, type WorkerHandle } from "./worker.js";

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-warm-"));
  await generateCheckpoint({
    family: "mixtral",
    dir,
    layers: 2,
    experts: 4,
    hiddenSize: 16,
    intermediateSize: 24,
    topK: 2,
    dtype: "float32",
    seed: 9,
  });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readyz(w: WorkerHandle): Promise<number> {
  return (await fetch(`http://127.0.0.1:${w.metricsPort}/readyz`)).status;
}

/** The warm-up series of /metrics, by name. */
async function warmSeries(w: WorkerHandle): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${w.metricsPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(switchyard_worker_(?:ready|warmup_\w+))\{[^}]*\} (\S+)$/gm))
    out[m[1]] = Number(m[2]);
  return out;
}

/** The checkpoint as a source whose reads wait for `gate`, and fail for `broken` ("layer:expert"). */
async function heldSource(gate: Promise<void>, broken?: string): Promise<ExpertSource> {
  const src = checkpointSource(await openCheckpoint(dir));
  return {
    ...src,
    readExpert: async (layer, expert) => {
      await gate;
      if (`${layer}:${expert}` === broken) throw new Error("shard model-00001.safetensors: unexpected end of file");
      return src.readExpert(layer, expert);
    },
  };
}

function start(source: ExpertSource, workerId: string): Promise<WorkerHandle> {
  return startWorker({
    checkpoint: source,
    pool: "p",
    workerId,
    port: 0,
    metricsPort: 0,
    host: "127.0.0.1",
    backend: "cpu",
    log: () => {},
  });
}

describe("worker warm-up", () => {
  it("is live at once and ready only once its experts are loaded", async () => {
    let open!: () => void;
    const w = await start(await heldSource(new Promise<void>((r) => (open = r))), "w0");
    try {
      expect(await health(w.port, "")).toBe("SERVING");
      expect(await health(w.port, WORKER_SERVICE)).toBe("NOT_SERVING");
      expect(await readyz(w)).toBe(503);
      expect(await warmSeries(w)).toEqual({
        switchyard_worker_ready: 0,
        switchyard_worker_warmup_loaded_experts: 0,
        switchyard_worker_warmup_target_experts: 8,
      });
      open();
      const r = await w.warmed;
      expect(r).toMatchObject({ loaded: 8, leftCold: 0 });
      expect(r?.bytes).toBe(8 * 3 * 16 * 24 * 4);
      expect(await health(w.port, WORKER_SERVICE)).toBe("SERVING");
      expect(await readyz(w)).toBe(200);
      expect(await warmSeries(w)).toEqual({
        switchyard_worker_ready: 1,
        switchyard_worker_warmup_loaded_experts: 8,
        switchyard_worker_warmup_target_experts: 8,
      });
      const client = new ExpertWorkerClient(`127.0.0.1:${w.port}`, credentials.createInsecure());
      const st = await new Promise<WorkerStatus>((res, rej) =>
        client.status({}, new Metadata(), (e, s) => (e ? rej(e) : res(s))),
      );
      client.close();
      expect(st.resident).toHaveLength(8);
      // Warming is not traffic: the hit ratio starts clean.
      expect([st.cacheHits, st.cacheMisses]).toEqual([0n, 0n]);
    } finally {
      await w.close();
    }
  });

  it("a plan change frees the slots of the experts it took away and warms those it brought", async () => {
    const planFile = join(dir, "plan.json");
    // 2 layers x 4 experts over w0 and w1: w0 serves experts 0-1 first, then 2-3
    const plan = (version: number, mine: number[]) => ({
      version,
      pool: "p",
      workers: ["w0", "w1"],
      replicas: [0, 1].map(() => [0, 1, 2, 3].map((e) => [mine.includes(e) ? 0 : 1])),
    });
    await writeFile(planFile, JSON.stringify(plan(1, [0, 1])));
    const w = await startWorker({
      checkpoint: dir,
      pool: "p",
      workerId: "w0",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend: "cpu",
      plan: planFile,
      cacheCapacity: 4, // exactly what the plan gives w0: the start-up warm-up fills the cache
      log: () => {},
    });
    const resident = () =>
      w.core
        .status()
        .resident.map((k) => `${k.layer}:${k.expert}`)
        .sort();
    try {
      await w.warmed;
      expect(resident()).toEqual(["0:0", "0:1", "1:0", "1:1"]);
      await writeFile(planFile, JSON.stringify(plan(2, [2, 3])));
      const deadline = Date.now() + 10_000;
      while (resident().join() !== "0:2,0:3,1:2,1:3" && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      expect(resident()).toEqual(["0:2", "0:3", "1:2", "1:3"]);
    } finally {
      await w.close();
    }
  });

  it("stays not ready, naming the expert, when one cannot be loaded", async () => {
    const w = await start(await heldSource(Promise.resolve(), "1:2"), "w1");
    try {
      await expect(w.warmed).rejects.toThrow(/warm-up: layer 1 expert 2: shard .* unexpected end of file/);
      expect(await health(w.port, WORKER_SERVICE)).toBe("NOT_SERVING");
      expect(await readyz(w)).toBe(503);
      expect((await warmSeries(w)).switchyard_worker_ready).toBe(0);
    } finally {
      await w.close();
    }
  });
});
