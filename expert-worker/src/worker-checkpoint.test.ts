// A worker opening a checkpoint whose config.json does not describe its tensors: it sizes its lists by the config
// (layers × experts) before reading an expert, so a wrong expert count must fail at start, naming the config.json key
// and the tensor, not run out of memory or fail later on one expert.

import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint } from "@switchyard/moe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startWorker } from "./worker.js";

let dir: string;
let config: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sy-worker-ckpt-"));
  await generateCheckpoint({
    family: "mixtral",
    dir,
    layers: 2,
    experts: 4,
    hiddenSize: 16,
    intermediateSize: 24,
    topK: 2,
    dtype: "float32",
    seed: 3,
  });
  config = await readFile(join(dir, "config.json"), "utf8");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function startWith(experts: number): Promise<unknown> {
  await writeFile(join(dir, "config.json"), JSON.stringify({ ...JSON.parse(config), num_local_experts: experts }));
  try {
    const w = await startWorker({
      checkpoint: dir,
      pool: "p",
      workerId: "w0",
      port: 0,
      metricsPort: 0,
      dataPort: -1,
      host: "127.0.0.1",
      backend: "cpu",
      log: () => {},
    });
    const warmed = await w.warmed.then(
      () => "warmed",
      (e: Error) => `warm-up failed: ${e.message}`,
    );
    await w.close();
    return `started (${warmed})`;
  } catch (e) {
    return e;
  }
}

describe("startWorker: config.json against the checkpoint's tensors", () => {
  it("an expert count the gate does not have fails at start, naming num_local_experts and the gate", async () => {
    const got = await startWith(64);
    expect(got).toMatchObject({
      code: "FAILED_PRECONDITION",
      message:
        `${join(dir, "config.json")}: num_local_experts (64) and hidden_size (16) say tensor ` +
        `model.layers.0.block_sparse_moe.gate.weight is [64, 16], but ${join(dir, "model.safetensors")} has it as [4, 16]`,
    });
  });

  it("an expert count past any model's (30,000,000) is refused by the config's bound", async () => {
    expect(await startWith(30_000_000)).toMatchObject({
      code: "INVALID_ARGUMENT",
      message: `${join(dir, "config.json")}: num_local_experts: must be at most 65536, got 30000000`,
    });
  });

  it("the config as generated still starts and warms", async () => {
    expect(await startWith(4)).toBe("started (warmed)");
  });
});
