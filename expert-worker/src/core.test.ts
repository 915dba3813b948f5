// WorkerCore's compute metrics over a fake backend (no GPU): the backend's own device time, where it reports one
// through RunRequest.onDeviceTime, becomes switchyard_worker_device_compute_duration_seconds beside the wall-clock
// compute_duration; a backend without a device clock leaves the device histogram empty.

import { DType, type ExpertBatch, encodeTensor } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import type { ExpertBackend, PreparedExpert, RunRequest } from "./backend/types.js";
import { ResidencyCache } from "./cache.js";
import { type ExpertSource, WorkerCore } from "./core.js";
import { WorkerMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { randomExpert, rng } from "./testing.js";

const D = 16;
const F = 24;

/** A backend that answers zeros after `wallMs` and, given `deviceMs`, reports it as the run's device time. */
function fakeBackend(o: { deviceMs?: number; wallMs: number }): ExpertBackend & { runs: number } {
  return {
    name: "cuda",
    kind: "cuda",
    runs: 0,
    describe: () => "fake",
    prepare: async (w): Promise<PreparedExpert> => ({
      hiddenSize: w.gate.cols,
      intermediateSize: w.gate.rows,
      bytes: 1,
    }),
    async run(req: RunRequest): Promise<Uint8Array> {
      this.runs++;
      await new Promise((r) => setTimeout(r, o.wallMs));
      if (o.deviceMs !== undefined) req.onDeviceTime?.(o.deviceMs);
      return new Uint8Array(req.rows * req.cols * 4);
    },
  };
}

function coreOver(backend: ExpertBackend) {
  const next = rng(11);
  const source: ExpertSource = {
    layers: 1,
    experts: 4,
    hiddenSize: D,
    intermediateSize: F,
    isMoeLayer: () => true,
    readExpert: async () => randomExpert(D, F, "float32", next),
  };
  const metrics = new WorkerMetrics({ pool: "p", worker: "w" });
  const cache = new ResidencyCache({
    capacity: 4,
    load: async (id) => ({
      prepared: await backend.prepare(await source.readExpert(id.layer, id.expert)),
      sourceBytes: 1,
    }),
  });
  const core = new WorkerCore({
    pool: "p",
    workerId: "w",
    source,
    backend,
    cache,
    queue: new WorkQueue(8, 1),
    metrics,
  });
  return { core, metrics };
}

const batch = (id: bigint): ExpertBatch => ({
  pool: "p",
  layer: 0,
  tokens: encodeTensor(new Float32Array(3 * D).fill(0.25), [3, D], DType.FLOAT32),
  slices: [
    { expert: 0, offset: 0, count: 2 },
    { expert: 1, offset: 2, count: 1 },
  ],
  rowWeights: undefined,
  batchId: id,
  timeoutMs: 0,
  tokenRows: [],
  combine: false,
  cancel: [],
});

/** A histogram's {count, sum} as the registry exports it. */
async function histogram(m: WorkerMetrics, name: string): Promise<{ count: number; sum: number }> {
  // a histogram's values carry the series' name (_bucket, _sum, _count)
  const values = ((await m.registry.getSingleMetric(name)?.get())?.values ?? []) as {
    metricName?: string;
    value: number;
  }[];
  const pick = (suffix: string) => values.find((v) => v.metricName === `${name}${suffix}`)?.value ?? Number.NaN;
  return { count: pick("_count"), sum: pick("_sum") };
}

describe("WorkerCore compute metrics", () => {
  it("observes the backend's device time in the device histogram, beside the wall time", async () => {
    const backend = fakeBackend({ deviceMs: 1.5, wallMs: 20 });
    const { core, metrics } = coreOver(backend);
    const r1 = await core.runBatch(batch(1n));
    await core.runBatch(batch(2n));
    expect(backend.runs).toBe(2);
    expect(await histogram(metrics, "switchyard_worker_device_compute_duration_seconds")).toEqual({
      count: 2,
      sum: expect.closeTo(0.003, 12),
    });
    const wall = await histogram(metrics, "switchyard_worker_compute_duration_seconds");
    expect(wall.count).toBe(2);
    expect(wall.sum).toBeGreaterThanOrEqual(0.038); // the backend's 20 ms each, timer slack aside
    expect(r1.stats?.computeMs).toBeGreaterThanOrEqual(19);
    expect(await metrics.registry.metrics()).toMatch(
      /switchyard_worker_device_compute_duration_seconds_count\{pool="p",worker="w"\} 2/,
    );
  });

  it("leaves the device histogram empty when the backend has no device clock", async () => {
    const { core, metrics } = coreOver(fakeBackend({ wallMs: 1 }));
    await core.runBatch(batch(1n));
    expect(await histogram(metrics, "switchyard_worker_device_compute_duration_seconds")).toEqual({
      count: 0,
      sum: 0,
    });
    expect((await histogram(metrics, "switchyard_worker_compute_duration_seconds")).count).toBe(1);
    // still exported (empty), so dashboards and rules see the same series on every worker
    expect(await metrics.registry.metrics()).toMatch(
      /switchyard_worker_device_compute_duration_seconds_count\{pool="p",worker="w"\} 0/,
    );
  });
});
