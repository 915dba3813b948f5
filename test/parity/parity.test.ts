// CI check of parity with transformers without torch: the checkpoints and inputs are regenerated from seeds
// (bit-identical to the ones transformers ran on), and transformers 5.17's outputs are committed beside this file.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  generateCheckpoint,
  openCheckpoint,
  readLayerFloat32,
  referenceMoeBlock,
  SafetensorsFile,
} from "@switchyard/moe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CASES, hiddenFor, TOKENS } from "./cases.js";

const OUTPUTS = join(import.meta.dirname, "transformers-5.17", "transformers-outputs.safetensors");

describe("referenceMoeBlock matches transformers 5.17 (fp32, CPU)", () => {
  let dir: string;
  let theirs: SafetensorsFile;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "parity-"));
    theirs = await SafetensorsFile.open(OUTPUTS);
  });
  afterAll(async () => {
    await theirs?.close();
    await rm(dir, { recursive: true, force: true });
  });
  for (const c of CASES) {
    it(c.name, async () => {
      await generateCheckpoint({ ...c, dir: join(dir, c.name) });
      const ckpt = await openCheckpoint(join(dir, c.name));
      const ours = referenceMoeBlock(ckpt.spec, await readLayerFloat32(ckpt, 0), hiddenFor(c)).output;
      await ckpt.close();
      const { info, data } = await theirs.read(c.name);
      expect(info.shape).toEqual([TOKENS, c.hiddenSize]);
      const ref = new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
      let maxAbs = 0;
      let maxRef = 0;
      for (let i = 0; i < ref.length; i++) {
        maxAbs = Math.max(maxAbs, Math.abs(ours[i] - ref[i]));
        maxRef = Math.max(maxRef, Math.abs(ref[i]));
      }
      expect(maxRef).toBeGreaterThan(0.5); // the block really produced something
      expect(maxAbs / maxRef).toBeLessThan(1e-5);
    });
  }
});
