import { defaultSpec, isMoeLayer } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { localPlan } from "./local-plan.js";

describe("the local mode's placement plan", () => {
  it("leaves the model's dense layers without copies, as the operator does, and places every MoE layer", () => {
    const spec = defaultSpec("deepseek-v3", {
      layers: 4,
      firstDenseLayers: 1,
      hiddenSize: 32,
      intermediateSize: 16,
      experts: 16,
      nGroup: 4,
      topkGroup: 2,
      topK: 4,
    });
    const { plan } = localPlan(spec, ["w0", "w1"], 2, 0);
    expect(plan.replicas).toHaveLength(4);
    expect(plan.replicas[0]).toEqual([]); // dense: no cache slot for it
    for (let l = 1; l < 4; l++) {
      expect(isMoeLayer(spec, l)).toBe(true);
      expect(plan.replicas[l]).toHaveLength(16);
      for (const holders of plan.replicas[l]) expect(holders.length).toBeGreaterThan(0);
    }
  });
});
