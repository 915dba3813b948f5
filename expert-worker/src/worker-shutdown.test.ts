// Graceful shutdown (SIGTERM -> close()): health goes NOT_SERVING, then the batches already running are answered,
// on the data path too, before the connections go.

import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint } from "@switchyard/moe";
import {
  DATA_PREFACE,
  DType,
  ExpertBatch,
  ExpertResult,
  encodeTensor,
  FrameReader,
  writeFrame,
} from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cpuBackend } from "./backend/select.js";
import type { ExpertBackend, RunRequest } from "./backend/types.js";
import { rng, uniform } from "./testing.js";
import { startWorker } from "./worker.js";

const D = 16;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-stop-"));
  await generateCheckpoint({
    family: "mixtral",
    dir,
    layers: 1,
    experts: 2,
    hiddenSize: D,
    intermediateSize: 24,
    seed: 5,
  });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("worker shutdown", () => {
  it("answers a batch running on the data path when it closes, before the connection goes", async () => {
    const inner = cpuBackend().backend;
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    let finish!: () => void;
    const held = new Promise<void>((r) => (finish = r));
    const backend: ExpertBackend = Object.assign(Object.create(inner), {
      run: async (req: RunRequest) => {
        started();
        await held;
        return inner.run(req);
      },
    });
    const w = await startWorker({
      checkpoint: dir,
      pool: "p",
      workerId: "w0",
      port: 0,
      metricsPort: 0,
      host: "127.0.0.1",
      backend,
      warm: false,
      log: () => {},
    });
    const s = connect(w.dataPort, "127.0.0.1");
    await once(s, "connect");
    const replies: ExpertResult[] = [];
    const reader = new FrameReader(1 << 20, false, (f) => replies.push(ExpertResult.decode(f)));
    s.on("data", (c) => reader.push(c));
    const closed = once(s, "close");
    s.write(DATA_PREFACE);
    const batch: ExpertBatch = {
      pool: "p",
      layer: 0,
      tokens: encodeTensor(uniform(3 * D, 1, rng(1)), [3, D], DType.FLOAT32),
      slices: [{ expert: 1, offset: 0, count: 3 }],
      rowWeights: undefined,
      batchId: 7n,
      timeoutMs: 0,
      tokenRows: [],
      combine: false,
      cancel: [],
    };
    writeFrame(s, ExpertBatch.encode(batch).finish());
    await running;
    const closing = w.close(); // SIGTERM while the batch computes
    setTimeout(finish, 100);
    await closed;
    await closing;
    expect(replies).toHaveLength(1);
    expect(replies[0]).toMatchObject({ batchId: 7n, error: undefined, output: { shape: [3, D] } });
  });
});
