import { describe, expect, it } from "vitest";
import { MAX_EXPERT_SERIES, WorkerMetrics } from "./metrics.js";

describe("WorkerMetrics", () => {
  it("bounds the layer x expert series and folds the rest into expert=other", async () => {
    const m = new WorkerMetrics({ pool: "p", worker: "w" });
    for (let i = 0; i < MAX_EXPERT_SERIES + 10; i++) m.countExpertTokens(Math.floor(i / 256), i % 256, 1);
    m.countExpertTokens(0, 0, 5); // an existing series keeps counting
    const metric = await m.registry.getSingleMetric("switchyard_worker_expert_tokens_total")?.get();
    const values = metric?.values ?? [];
    expect(values.length).toBe(MAX_EXPERT_SERIES + 1); // + the "other" series of layer 16
    const other = values.filter((v) => v.labels.expert === "other");
    expect(other.reduce((a, v) => a + v.value, 0)).toBe(10);
    expect(values.find((v) => v.labels.layer === "0" && v.labels.expert === "0")?.value).toBe(6);
    expect(await m.registry.metrics()).toContain('pool="p",worker="w"');
  });
});

describe("the event loop's busy time", () => {
  it("grows by the time the loop was kept busy between two scrapes", async () => {
    const m = new WorkerMetrics({ pool: "p", worker: "w" });
    const busy = async () =>
      (await m.registry.getSingleMetric("switchyard_worker_event_loop_busy_seconds_total")?.get())?.values[0]?.value ??
      -1;
    const before = await busy();
    const until = Date.now() + 80;
    while (Date.now() < until) {} // 80 ms of a busy loop
    const after = await busy();
    expect(before).toBeGreaterThanOrEqual(0);
    expect(after - before).toBeGreaterThanOrEqual(0.07);
    expect(await m.registry.metrics()).toMatch(
      /switchyard_worker_event_loop_busy_seconds_total\{pool="p",worker="w"\} /,
    );
  });
});

describe("WorkerMetrics.collectProcessMetrics", () => {
  it("adds Node's process metrics once (main.ts), with the worker's labels; a plain instance has none", async () => {
    const plain = new WorkerMetrics({ pool: "p", worker: "w0" });
    expect(await plain.registry.metrics()).not.toMatch(/^process_resident_memory_bytes/m);
    const m = new WorkerMetrics({ pool: "p", worker: "w0" });
    m.collectProcessMetrics();
    m.collectProcessMetrics(); // a second call would register every series twice and throw
    const text = await m.registry.metrics();
    expect(text).toMatch(/^process_resident_memory_bytes\{pool="p",worker="w0"\} \d/m);
  });
});

describe("switchyard_worker_gpu_max_run_rows", () => {
  it("reads the backend's rows per run at scrape time, 0 while it has none (CPU, or no context yet)", async () => {
    const m = new WorkerMetrics({ pool: "p", worker: "w" });
    const value = async () =>
      (await m.registry.getSingleMetric("switchyard_worker_gpu_max_run_rows")?.get())?.values[0]?.value;
    expect(await value()).toBe(0);
    let rows: number | undefined;
    m.gpuRunRowLimit = () => rows;
    expect(await value()).toBe(0);
    rows = 97885;
    expect(await value()).toBe(97885);
  });
});
