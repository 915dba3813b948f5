// WorkerCore and the placement plan on the reference backend: a batch validated under the old plan that runs after
// a plan change took its expert away fails with FAILED_PRECONDITION (the router retries it elsewhere) and does not
// load that expert back into the cache; Prefetch/Evict on a dense layer is INVALID_ARGUMENT `layer`, as a batch is.

import { DType, type ExpertBatch, encodeTensor, SwitchyardError } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { ReferenceBackend } from "./backend/reference.js";
import { keyOf, ResidencyCache } from "./cache.js";
import { type ExpertSource, WorkerCore } from "./core.js";
import { WorkerMetrics } from "./metrics.js";
import { WorkQueue } from "./queue.js";
import { randomExpert, rng } from "./testing.js";

const D = 8;
const F = 12;

function setup(o: { served: string[]; capacity: number; dense?: number[] }) {
  const next = rng(5);
  const source: ExpertSource = {
    layers: 2,
    experts: 4,
    hiddenSize: D,
    intermediateSize: F,
    isMoeLayer: (l) => !(o.dense ?? []).includes(l),
    readExpert: async () => randomExpert(D, F, "float32", next),
  };
  const backend = new ReferenceBackend();
  // the first run waits for `release`: a batch queued behind it waits too
  let release!: () => void;
  const held = new Promise<void>((r) => {
    release = r;
  });
  let runs = 0;
  const run = backend.run.bind(backend);
  backend.run = async (req) => {
    if (runs++ === 0) await held;
    return run(req);
  };
  const loads: string[] = [];
  const cache = new ResidencyCache({
    capacity: o.capacity,
    load: async (id) => {
      loads.push(keyOf(id.layer, id.expert));
      return { prepared: await backend.prepare(await source.readExpert(id.layer, id.expert)), sourceBytes: 1 };
    },
  });
  const core = new WorkerCore({
    pool: "p",
    workerId: "w",
    source,
    backend,
    cache,
    queue: new WorkQueue(8, 1),
    metrics: new WorkerMetrics({ pool: "p", worker: "w" }),
    served: new Set(o.served),
  });
  return { core, cache, loads, release };
}

const batch = (expert: number, id: bigint): ExpertBatch => ({
  pool: "p",
  layer: 1,
  tokens: encodeTensor(new Float32Array(2 * D).fill(0.5), [2, D], DType.FLOAT32),
  // a zero-count slice first: the error names the slice that asks for the expert, by its index in the request
  slices: [
    { expert: 3, offset: 0, count: 0 },
    { expert, offset: 0, count: 2 },
  ],
  rowWeights: undefined,
  batchId: id,
  timeoutMs: 0,
  tokenRows: [],
  combine: false,
  cancel: [],
});

describe("a plan change while a batch waits in the queue", () => {
  it("fails the batch whose expert is no longer served, FAILED_PRECONDITION naming the slice, without loading it", async () => {
    const { core, cache, loads, release } = setup({ served: ["1:0", "1:1"], capacity: 2 });
    const a = core.runBatch(batch(0, 1n));
    const b = core.runBatch(batch(1, 2n)); // validated now (1:1 is served), waits behind a
    await new Promise((r) => setTimeout(r, 10));
    // what worker.ts does on a new plan: 1:1 is gone, 1:2 is served now
    const served = new Set(["1:0", "1:2"]);
    core.o.served = served;
    cache.retain((id) => served.has(keyOf(id.layer, id.expert)));
    release();
    await expect(a).resolves.toMatchObject({ batchId: 1n });
    const err = await b.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SwitchyardError);
    expect(err).toMatchObject({ code: "FAILED_PRECONDITION", field: "slices[1].expert" });
    expect((err as Error).message).toMatch(/expert 1 of layer 1 is no longer served/);
    // 1:1 was never loaded, so its slot is free for what the new plan serves
    expect(loads).toEqual(["1:0"]);
    expect(cache.resident().map((i) => keyOf(i.layer, i.expert))).toEqual(["1:0"]);
    expect(await cache.fill({ layer: 1, expert: 2 })).toBe(true);
  });
});

describe("Prefetch and Evict on a dense layer", () => {
  it("answer INVALID_ARGUMENT naming the key's layer, as a batch for that layer does", async () => {
    const { core } = setup({ served: ["1:0"], capacity: 2, dense: [0] });
    const keys = [
      { layer: 1, expert: 0 },
      { layer: 0, expert: 1 },
    ];
    await expect(core.prefetch("p", keys)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      field: "experts[1].layer",
      message: expect.stringMatching(/layer 0 is dense/),
    });
    expect(() => core.evict("p", keys)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(() => core.evict("p", keys)).toThrow(/experts\[1\]\.layer: layer 0 is dense/);
  });
});
