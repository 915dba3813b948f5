// A worker whose backend reports a fatal device error (ExpertBackend.onFatal; the CUDA backend after a sticky CUDA
// error) stops serving at once: liveness and readiness NOT_SERVING, /readyz 503, the ready gauge 0, and it stays so
// when its warm-up ends later; the caller hears it once (main.ts exits 1 on it). CPU only: a reference backend that
// raises the error on demand. The real fault on a GPU: backend/cuda-fault.test.ts.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint } from "@switchyard/moe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReferenceBackend } from "./backend/reference.js";
import type { ExpertBackend, ExpertWeights, PreparedExpert } from "./backend/types.js";
import { health } from "./testing.js";
import { startWorker, WORKER_SERVICE } from "./worker.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-fatal-"));
  await generateCheckpoint({ family: "mixtral", dir, layers: 1, experts: 4, hiddenSize: 16, intermediateSize: 24 });
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** A reference backend with onFatal; `breakDevice(why)` raises the fatal error; prepare waits for `release`. */
class BreakableBackend extends ReferenceBackend implements ExpertBackend {
  private readonly listeners: ((why: string) => void)[] = [];
  release: () => void = () => {};
  private readonly gate = new Promise<void>((r) => {
    this.release = r;
  });
  onFatal(l: (why: string) => void): void {
    this.listeners.push(l);
  }
  breakDevice(why: string): void {
    for (const l of this.listeners) l(why);
  }
  override async prepare(w: ExpertWeights): Promise<PreparedExpert> {
    await this.gate; // the warm-up is still running when the device breaks
    return super.prepare(w);
  }
}

describe("a fatal device error", () => {
  it("stops the worker serving, for good, and tells the caller once", async () => {
    const backend = new BreakableBackend();
    const heard: string[] = [];
    const lines: string[] = [];
    const w = await startWorker({
      checkpoint: dir,
      pool: "p",
      workerId: "w",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend,
      log: (l) => lines.push(l),
      onFatal: (why) => heard.push(why),
    });
    try {
      expect(await health(w.port, "")).toBe("SERVING");
      backend.breakDevice("GPU run on CUDA device 0: an illegal memory access was encountered");
      backend.breakDevice("a second report");
      expect(heard).toEqual(["GPU run on CUDA device 0: an illegal memory access was encountered"]);
      expect(lines).toContain(
        "fatal device error, no longer serving: GPU run on CUDA device 0: an illegal memory access was encountered",
      );
      expect(await health(w.port, "")).toBe("NOT_SERVING");
      expect(await health(w.port, WORKER_SERVICE)).toBe("NOT_SERVING");
      backend.release();
      await w.warmed; // the warm-up ends after the error: the worker must not turn ready
      expect(await health(w.port, WORKER_SERVICE)).toBe("NOT_SERVING");
      expect((await fetch(`http://127.0.0.1:${w.metricsPort}/readyz`)).status).toBe(503);
      const text = await (await fetch(`http://127.0.0.1:${w.metricsPort}/metrics`)).text();
      expect(text).toMatch(/^switchyard_worker_ready\{[^}]*\} 0$/m);
    } finally {
      backend.release();
      await Promise.all([w.close(), w.close()]); // one close for both callers
    }
  });
});
