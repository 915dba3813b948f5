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
