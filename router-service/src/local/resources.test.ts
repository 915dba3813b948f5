import { defaultSpec } from "@switchyard/moe";
import { describe, expect, it } from "vitest";
import { localModel } from "./main.js";
import { checkRunFits, runFootprint, WontFitError } from "./resources.js";

const GB = 1e9;

describe("what a local run needs", () => {
  it("counts the experts, the redundant copies and the fp32 reference (Mixtral-8x7B, 2 layers)", () => {
    const f = runFootprint(defaultSpec("mixtral", localModel("mixtral", "full")), 2);
    const expert = 3 * 4096 * 14336 * 2;
    expect(f.checkpoint).toBe(2 * 8 * expert);
    expect(f.workers).toBe(2 * 10 * expert);
    expect(f.reference).toBe(2 * 8 * expert * 2);
  });

  it("counts a shared expert in the checkpoint (DeepSeek-V3: 256 routed + 1 shared of the same width)", () => {
    const f = runFootprint(defaultSpec("deepseek-v3", localModel("deepseek-v3", "full")), 64);
    const expert = 3 * 7168 * 2048 * 2;
    expect(f.checkpoint).toBe(2 * 257 * expert);
    expect(f.reference).toBe(2 * 257 * expert * 2);
    expect(f.workers).toBe(2 * 320 * expert);
    // and in the workers' memory where they run it as slices
    expect(runFootprint(defaultSpec("deepseek-v3", localModel("deepseek-v3", "full")), 64, true).workers).toBe(
      2 * 321 * expert,
    );
  });

  it("counts the shared experts once at their total width (sharedIntermediateSize), however many there are", () => {
    const two = defaultSpec("deepseek-v3", { ...localModel("deepseek-v3", "full"), sharedExperts: 2 });
    const expert = 3 * 7168 * 2048 * 2;
    expect(two.sharedIntermediateSize).toBe(2 * 2048);
    expect(runFootprint(two, 0).checkpoint).toBe(2 * 258 * expert);
    expect(runFootprint(two, 0).reference).toBe(2 * 258 * expert * 2);
  });

  it("keeps DeepSeek-V3's reference packed on a 128 GB machine, refuses it on 64 GB; Mixtral's stays fp32", () => {
    const machine = { totalMemory: 128 * GB, freeDisk: 60 * GB, generating: true };
    const ds = runFootprint(defaultSpec("deepseek-v3", localModel("deepseek-v3", "full")), 64);
    expect(ds.referencePacked! * 2).toBe(ds.reference);
    // 56 GB of experts (with the 64 redundant copies) + 90 GB in fp32 is over 90% of 128 GB; + 45 GB packed is not
    expect(checkRunFits("--size full", ds, machine)).toEqual({ packed: true });
    expect(() => checkRunFits("--size full", ds, { ...machine, totalMemory: 64 * GB })).toThrow(
      /^--size full: the workers' experts \(5\d\.\d GB\) and the reference's weights \(4\d\.\d GB, packed in 16 bits\) need .* this machine has 64\.0 GB/,
    );
    expect(() => checkRunFits("--size full", ds, { ...machine, totalMemory: 64 * GB })).toThrow(WontFitError);
    const mx = runFootprint(defaultSpec("mixtral", localModel("mixtral", "full")), 2);
    expect(checkRunFits("--size full", mx, machine)).toEqual({ packed: false });
    const fp32 = runFootprint(defaultSpec("mixtral", { ...localModel("mixtral", "full"), dtype: "float32" }), 2);
    expect(fp32.referencePacked).toBeNull();
  });

  it("refuses to generate a checkpoint the disk cannot hold, and does not ask when it exists already", () => {
    const mx = runFootprint(defaultSpec("mixtral", localModel("mixtral", "full")), 2);
    const small = { totalMemory: 128 * GB, freeDisk: 4 * GB };
    expect(() => checkRunFits("--size full", mx, { ...small, generating: true })).toThrow(
      /the checkpoint needs 5\.6 GB of disk under \.cache\/checkpoints; 4\.0 GB is free/,
    );
    expect(() => checkRunFits("--size full", mx, { ...small, generating: false })).not.toThrow();
  });
});
