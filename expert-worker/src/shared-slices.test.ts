// A worker serves the shared expert's slices (packages/moe sharedSlices) as expert ids E, E+1, ...: through real gRPC
// on a generated Qwen2-MoE checkpoint, each slice against the float64 reference of its columns, both together
// against the whole shared MLP, and an id past the slices answers INVALID_ARGUMENT naming the field.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import {
  expertToFloat32,
  generateCheckpoint,
  openCheckpoint,
  referenceExpertFFN64,
  sliceSharedExpert,
} from "@switchyard/moe";
import {
  bytesToFloat32,
  DType,
  type ExpertBatch,
  type ExpertResult,
  ExpertWorkerClient,
  encodeTensor,
} from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rng, uniform } from "./testing.js";
import { startWorker, type WorkerHandle } from "./worker.js";

const D = 32;
const F = 24;
const E = 4;
let dir: string;
let worker: WorkerHandle;
let client: ExpertWorkerClient;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-shared-"));
  await generateCheckpoint({
    family: "qwen2-moe",
    dir,
    layers: 2,
    experts: E,
    hiddenSize: D,
    intermediateSize: F,
    sharedIntermediateSize: 2 * F,
    seed: 5,
  });
  worker = await startWorker({
    checkpoint: dir,
    pool: "p",
    workerId: "w0",
    port: 0,
    metricsPort: 0,
    host: "127.0.0.1",
    backend: "cpu",
    log: () => {},
  });
  await worker.warmed;
  client = new ExpertWorkerClient(`127.0.0.1:${worker.port}`, credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await worker?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const run = (b: ExpertBatch) =>
  new Promise<ExpertResult>((resolve, reject) =>
    client.runExperts(b, new Metadata(), (err: ServiceError | null, res: ExpertResult) =>
      err ? reject(err) : resolve(res),
    ),
  );

describe("the shared expert's slices on a worker", () => {
  it("runs each slice as an expert, and the slices add up to the whole shared MLP", async () => {
    const T = 3;
    const x = uniform(T * D, 1, rng(9));
    // the same rows twice: rows [0, T) to slice 0 (id E), rows [T, 2T) to slice 1 (id E+1)
    const rows = new Float32Array(2 * T * D);
    rows.set(x, 0);
    rows.set(x, T * D);
    const res = await run({
      pool: "p",
      layer: 1,
      tokens: encodeTensor(rows, [2 * T, D], DType.FLOAT32),
      slices: [
        { expert: E, offset: 0, count: T },
        { expert: E + 1, offset: T, count: T },
      ],
      rowWeights: undefined,
      batchId: 1n,
      timeoutMs: 0,
      tokenRows: [],
      combine: false,
      cancel: [],
    });
    const got = bytesToFloat32(res.output?.data as Uint8Array, DType.FLOAT32, true);
    const ckpt = await openCheckpoint(dir);
    const whole = await ckpt.readSharedExpert(1);
    await ckpt.close();
    if (!whole) throw new Error("no shared expert generated");
    const all = [{ expert: 0, offset: 0, count: T }];
    const wholeY = referenceExpertFFN64(x, D, all, () => expertToFloat32(whole));
    const maxAbs = wholeY.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expect(maxAbs).toBeGreaterThan(1e-3);
    for (let j = 0; j < 2; j++) {
      const want = referenceExpertFFN64(x, D, all, () => expertToFloat32(sliceSharedExpert(whole, j, F)));
      for (let i = 0; i < want.length; i++)
        expect(Math.abs(got[j * T * D + i] - want[i])).toBeLessThanOrEqual(2e-5 * maxAbs);
    }
    for (let i = 0; i < T * D; i++)
      expect(Math.abs(got[i] + got[T * D + i] - wholeY[i])).toBeLessThanOrEqual(4e-5 * maxAbs);
  });

  it("answers INVALID_ARGUMENT naming the field for an id past the slices", async () => {
    const err = await run({
      pool: "p",
      layer: 1,
      tokens: encodeTensor(new Float32Array(D), [1, D], DType.FLOAT32),
      slices: [{ expert: E + 2, offset: 0, count: 1 }],
      rowWeights: undefined,
      batchId: 2n,
      timeoutMs: 0,
      tokenRows: [],
      combine: false,
      cancel: [],
    }).then(
      () => null,
      (e: ServiceError) => e,
    );
    expect(err?.code).toBe(status.INVALID_ARGUMENT);
    expect(err?.details).toMatch(
      /slices\[0\]\.expert: unknown expert 6 \(layer has 4 experts and 2 shared slices \(ids 4-5\)\)/,
    );
  });
});
