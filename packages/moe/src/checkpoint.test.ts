import { mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "@switchyard/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  checkConfigAgainstTensors,
  firstNonFinite,
  INDEX_FILE,
  openCheckpoint,
  readLayerFloat32,
  SINGLE_FILE,
  toFloat32,
} from "./checkpoint.js";
import { generateCheckpoint, generatedValues } from "./generate.js";
import { buildSafetensorsHeader, SafetensorsFile, writeSafetensors } from "./safetensors.js";
import {
  correctionBiasKey,
  defaultSpec,
  expertKeys,
  gateKey,
  hfConfigJson,
  type ModelSpec,
  sharedExpertKeys,
} from "./spec.js";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "ckpt-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function rounded(values: Float32Array, dtype: ModelSpec["dtype"]): Float32Array {
  if (dtype === "bfloat16") return bf16ToF32(f32ToBf16(values));
  if (dtype === "float16") return f16ToF32(f32ToF16(values));
  return values;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

async function expectRejects(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, "expected a rejection").toBeDefined();
  expect((err as { code?: string }).code).toBe(code);
  expect((err as Error).message).toMatch(message);
}

describe("openCheckpoint", () => {
  for (const [family, dtype, shards] of [
    ["mixtral", "bfloat16", 1],
    ["qwen2-moe", "float16", 3],
    ["qwen3-moe", "float32", 2],
    ["deepseek-v3", "bfloat16", 4],
  ] as const) {
    it(`reads ${family} ${dtype} in ${shards} file(s): values as generated, only the requested bytes`, async () => {
      const dir = join(root, `${family}-${shards}`);
      const g = await generateCheckpoint({
        family,
        dir,
        seed: 7,
        layers: 2,
        hiddenSize: 24,
        intermediateSize: 40,
        dtype,
        shards,
      });
      expect(g.files.length).toBe(shards);
      const ckpt = await openCheckpoint(dir);
      expect(ckpt.spec).toEqual(g.spec);
      const s = ckpt.spec;
      const e = s.experts - 1;
      const w = await ckpt.readExpert(1, e);
      expect([w.gate.rows, w.gate.cols, w.down.rows, w.down.cols]).toEqual([40, 24, 24, 40]);
      expect(w.gate.dtype).toBe(dtype);
      const keys = expertKeys(s, 1, e);
      expect(Array.from(toFloat32(w.up))).toEqual(Array.from(rounded(generatedValues(s, 7, keys.up), dtype)));
      const bpe = dtype === "float32" ? 4 : 2;
      expect(ckpt.bytesRead).toBe(3 * 40 * 24 * bpe); // one expert, nothing else
      const gate = await ckpt.readGate(0);
      expect([gate.rows, gate.cols]).toEqual([s.experts, 24]);
      expect(Array.from(toFloat32(gate))).toEqual(Array.from(rounded(generatedValues(s, 7, gateKey(s, 0)), dtype)));
      const shared = await ckpt.readSharedExpert(0);
      expect(shared === undefined).toBe(s.sharedExperts === 0);
      if (shared) {
        expect(shared.gate.rows).toBe(s.sharedIntermediateSize);
        const k = sharedExpertKeys(s, 0)!;
        expect(Array.from(toFloat32(shared.down))).toEqual(Array.from(rounded(generatedValues(s, 7, k.down), dtype)));
      }
      const sg = await ckpt.readSharedExpertGate(0);
      expect(sg === undefined).toBe(family !== "qwen2-moe");
      if (sg) expect([sg.rows, sg.cols]).toEqual([1, 24]);
      const bias = await ckpt.readCorrectionBias(1);
      expect(bias === undefined).toBe(family !== "deepseek-v3");
      if (bias) {
        expect(bias.dtype).toBe("float32");
        const b = toFloat32(bias);
        expect(b.length).toBe(s.experts);
        expect(Math.max(...b.map(Math.abs))).toBeLessThanOrEqual(0.05);
      }
      if (shards > 1) expect(ckpt.fileOf(keys.gate)).toMatch(/^model-0000\d-of-0000\d\.safetensors$/);
      const layer = await readLayerFloat32(ckpt, 1);
      expect(layer.experts.length).toBe(s.experts);
      await ckpt.close();
    });
  }

  it("a worker serving one expert opens only the shard that holds it", async () => {
    const dir = join(root, "sharded-lazy");
    await generateCheckpoint({
      family: "qwen3-moe",
      dir,
      seed: 1,
      layers: 4,
      hiddenSize: 16,
      intermediateSize: 16,
      shards: 4,
    });
    const ckpt = await openCheckpoint(dir);
    // break every shard except the one holding layer 3's expert 5: the read must still succeed
    const keep = ckpt.fileOf(expertKeys(ckpt.spec, 3, 5).gate)!;
    const index = JSON.parse(await readFile(join(dir, INDEX_FILE), "utf8"));
    for (const f of new Set(Object.values(index.weight_map) as string[]))
      if (f !== keep) await writeFile(join(dir, f), "garbage");
    const w = await ckpt.readExpert(3, 5);
    expect(w.down.rows).toBe(16);
    await expectRejects(ckpt.readExpert(0, 0), "FAILED_PRECONDITION", /truncated|bad safetensors header/);
    await ckpt.close();
  });

  it("rejects bad layer and expert indices naming the field", async () => {
    const dir = join(root, "idx");
    await generateCheckpoint({
      family: "deepseek-v3",
      dir,
      seed: 1,
      layers: 3,
      firstDenseLayers: 1,
      hiddenSize: 16,
      intermediateSize: 8,
    });
    const ckpt = await openCheckpoint(dir);
    expect(() => ckpt.readExpert(0, 0)).toThrow(/^layer: layer 0 is a dense layer/);
    expect(() => ckpt.readGate(3)).toThrow(/^layer: must be an integer in \[0, 3\), got 3/);
    await expectRejects(ckpt.readExpert(1, 16), "INVALID_ARGUMENT", /^expert: must be an integer in \[0, 16\), got 16/);
    await ckpt.close();
  });
});

describe("checkpoint errors name the file and tensor", () => {
  const spec: ModelSpec = defaultSpec("mixtral", {
    layers: 1,
    experts: 2,
    hiddenSize: 4,
    intermediateSize: 6,
    topK: 1,
    dtype: "float32",
  });
  async function writeCkpt(dir: string, tensors: { name: string; shape: number[]; dtype?: "F32" | "BF16" }[]) {
    await rm(dir, { recursive: true, force: true });
    await generateCheckpoint({
      family: "mixtral",
      dir,
      layers: 1,
      experts: 2,
      hiddenSize: 4,
      intermediateSize: 6,
      topK: 1,
      dtype: "float32",
    });
    await writeSafetensors(
      join(dir, SINGLE_FILE),
      tensors.map((t) => ({
        name: t.name,
        dtype: t.dtype ?? "F32",
        shape: t.shape,
        data: new Uint8Array(t.shape.reduce((a, b) => a * b, 1) * (t.dtype === "BF16" ? 2 : 4)),
      })),
    );
    return dir;
  }

  it("missing key", async () => {
    const dir = await writeCkpt(join(root, "missing"), [{ name: gateKey(spec, 0), shape: [2, 4] }]);
    const ckpt = await openCheckpoint(dir);
    await expectRejects(
      ckpt.readExpert(0, 1),
      "NOT_FOUND",
      new RegExp(
        `^${join(dir, SINGLE_FILE)}: tensor model\\.layers\\.0\\.block_sparse_moe\\.experts\\.1\\.w1\\.weight not found`,
      ),
    );
    await ckpt.close();
  });
  it("key missing from the index", async () => {
    const dir = join(root, "index-missing");
    await generateCheckpoint({
      family: "mixtral",
      dir,
      layers: 1,
      experts: 2,
      hiddenSize: 4,
      intermediateSize: 6,
      topK: 1,
      shards: 2,
    });
    const index = JSON.parse(await readFile(join(dir, INDEX_FILE), "utf8"));
    delete index.weight_map[gateKey(spec, 0)];
    await writeFile(join(dir, INDEX_FILE), JSON.stringify(index));
    const ckpt = await openCheckpoint(dir);
    await expectRejects(
      ckpt.readGate(0),
      "NOT_FOUND",
      /model\.safetensors\.index\.json: tensor model\.layers\.0\.block_sparse_moe\.gate\.weight is not in weight_map/,
    );
    await ckpt.close();
  });
  it("index pointing outside the directory", async () => {
    const dir = join(root, "index-escape");
    await generateCheckpoint({
      family: "mixtral",
      dir,
      layers: 1,
      experts: 2,
      hiddenSize: 4,
      intermediateSize: 6,
      topK: 1,
      shards: 2,
    });
    await writeFile(join(dir, INDEX_FILE), JSON.stringify({ weight_map: { a: "../../etc/passwd" } }));
    await expectRejects(
      openCheckpoint(dir),
      "FAILED_PRECONDITION",
      /weight_map\["a"\] must be a file name in the checkpoint directory/,
    );
  });
  it("wrong shape", async () => {
    const dir = await writeCkpt(join(root, "shape"), [{ name: gateKey(spec, 0), shape: [4, 2] }]);
    const ckpt = await openCheckpoint(dir);
    await expectRejects(
      ckpt.readGate(0),
      "FAILED_PRECONDITION",
      /model\.safetensors: tensor model\.layers\.0\.block_sparse_moe\.gate\.weight: expected shape \[2, 4\], got \[4, 2\]/,
    );
    await ckpt.close();
  });
  it("unsupported dtype", async () => {
    const dir = join(root, "dtype");
    await generateCheckpoint({
      family: "mixtral",
      dir,
      layers: 1,
      experts: 2,
      hiddenSize: 4,
      intermediateSize: 6,
      topK: 1,
    });
    const { header } = buildSafetensorsHeader([{ name: gateKey(spec, 0), dtype: "F32", shape: [2, 4] }]);
    const text = Buffer.from(header.subarray(8)).toString().replace('"F32"', '"I32"');
    const body = Buffer.from(text);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(body.length));
    await writeFile(join(dir, SINGLE_FILE), Buffer.concat([len, body, Buffer.alloc(32)]));
    const ckpt = await openCheckpoint(dir);
    await expectRejects(ckpt.readGate(0), "FAILED_PRECONDITION", /gate\.weight: dtype I32 is not supported/);
    await ckpt.close();
  });
  it("DeepSeek-V3's FP8 release: refused by its config, and its float8 tensors never read as weights", async () => {
    const dir = join(root, "fp8");
    const g = await generateCheckpoint({ family: "deepseek-v3", dir, layers: 1, hiddenSize: 4, intermediateSize: 6 });
    const keys = expertKeys(g.spec, 0, 0);
    const fp8 = [keys.gate, keys.up, keys.down].flatMap((k) => {
      const shape = k === keys.down ? [4, 6] : [6, 4];
      return [
        { name: k, dtype: "F8_E4M3", shape },
        { name: k.replace(/weight$/, "weight_scale_inv"), dtype: "F32", shape: [1, 1] },
      ];
    });
    const { header, dataBytes } = buildSafetensorsHeader(fp8 as Parameters<typeof buildSafetensorsHeader>[0]);
    await writeFile(join(dir, SINGLE_FILE), Buffer.concat([header, Buffer.alloc(dataBytes)]));
    const config = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    config.quantization_config = { quant_method: "fp8", fmt: "e4m3", weight_block_size: [128, 128] };
    await writeFile(join(dir, "config.json"), JSON.stringify(config));
    await expectRejects(openCheckpoint(dir), "INVALID_ARGUMENT", /config\.json: quantization_config: fp8-quantized/);
    delete config.quantization_config;
    await writeFile(join(dir, "config.json"), JSON.stringify(config));
    const ckpt = await openCheckpoint(dir);
    await expectRejects(
      ckpt.readExpert(0, 0),
      "FAILED_PRECONDITION",
      /experts\.0\.(gate|up|down)_proj\.weight: dtype F8_E4M3 is not supported/,
    );
    await ckpt.close();
  });
  it("a non-finite e_score_correction_bias", async () => {
    const dir = join(root, "bias-nan");
    const g = await generateCheckpoint({ family: "deepseek-v3", dir, layers: 1, hiddenSize: 4, intermediateSize: 6 });
    const key = correctionBiasKey(g.spec, 0) as string;
    const path = join(dir, SINGLE_FILE);
    const st = await SafetensorsFile.open(path);
    const info = st.info(key);
    await st.close();
    expect(info?.dtype).toBe("F32");
    const bytes = await readFile(path);
    bytes.writeFloatLE(Number.NaN, (info?.begin ?? 0) + 2 * 4);
    await writeFile(path, bytes);
    const ckpt = await openCheckpoint(dir);
    const msg = `${path}: tensor ${key}[2]: must be finite, got NaN`;
    await expectRejects(ckpt.readCorrectionBias(0), "FAILED_PRECONDITION", new RegExp(`^${escapeRegExp(msg)}$`));
    await expectRejects(
      readLayerFloat32(ckpt, 0),
      "FAILED_PRECONDITION",
      /e_score_correction_bias\[2\]: must be finite/,
    );
    await ckpt.close();
  });
  it("truncated file", async () => {
    const dir = join(root, "trunc");
    await generateCheckpoint({
      family: "mixtral",
      dir,
      layers: 1,
      experts: 2,
      hiddenSize: 4,
      intermediateSize: 6,
      topK: 1,
    });
    const path = join(dir, SINGLE_FILE);
    const size = (await readFile(path)).byteLength;
    await truncate(path, size - 10);
    const ckpt = await openCheckpoint(dir);
    await expectRejects(
      ckpt.readGate(0),
      "FAILED_PRECONDITION",
      new RegExp(
        `^${path}: truncated: tensor model\\.layers\\.0\\.block_sparse_moe\\.experts\\.1\\.w2\\.weight ends at data byte`,
      ),
    );
    await ckpt.close();
    await truncate(path, 5);
    const c2 = await openCheckpoint(dir);
    await expectRejects(c2.readGate(0), "FAILED_PRECONDITION", /truncated: 5 bytes/);
    await c2.close();
  });
  it("bad headers", async () => {
    const path = join(root, "bad.safetensors");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(5n);
    await writeFile(path, Buffer.concat([len, Buffer.from("{nope")]));
    await expectRejects(
      SafetensorsFile.open(path),
      "FAILED_PRECONDITION",
      /bad\.safetensors: bad safetensors header: not valid JSON/,
    );
    len.writeBigUInt64LE(1000n);
    await writeFile(path, Buffer.concat([len, Buffer.from("{}")]));
    await expectRejects(
      SafetensorsFile.open(path),
      "FAILED_PRECONDITION",
      /truncated: header length 1000 exceeds the file/,
    );
    len.writeBigUInt64LE(2n ** 40n);
    await writeFile(path, Buffer.concat([len, Buffer.from("{}")]));
    await expectRejects(SafetensorsFile.open(path), "FAILED_PRECONDITION", /header length 1099511627776 out of range/);
    const bad = JSON.stringify({ w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 12] } });
    len.writeBigUInt64LE(BigInt(bad.length));
    await writeFile(path, Buffer.concat([len, Buffer.from(bad), Buffer.alloc(16)]));
    await expectRejects(
      SafetensorsFile.open(path),
      "FAILED_PRECONDITION",
      /tensor w: data_offsets span 12 bytes, shape \[2, 2\] F32 needs 16/,
    );
    await expectRejects(
      SafetensorsFile.open(join(root, "nope.safetensors")),
      "NOT_FOUND",
      /nope\.safetensors: no such file/,
    );
  });
  it("missing config.json or weights", async () => {
    const dir = join(root, "empty");
    await rm(dir, { recursive: true, force: true });
    await expectRejects(openCheckpoint(dir), "NOT_FOUND", /empty\/config\.json: no such file/);
    const { mkdir } = await import("node:fs/promises");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "config.json"), hfConfigJson(spec));
    await expectRejects(
      openCheckpoint(dir),
      "NOT_FOUND",
      /neither model\.safetensors nor model\.safetensors\.index\.json/,
    );
    await writeFile(join(dir, "config.json"), "{");
    await expectRejects(openCheckpoint(dir), "FAILED_PRECONDITION", /config\.json: not valid JSON/);
  });
});

describe("checkpoint: review findings", () => {
  it("a non-finite gate weight fails at load, naming the file, tensor, row and column", async () => {
    for (const [dtype, st, write] of [
      ["bfloat16", "BF16", (b: Buffer, at: number, i: number) => b.writeUInt16LE(0x7fc0, at + 2 * i)],
      ["float16", "F16", (b: Buffer, at: number, i: number) => b.writeUInt16LE(0xfc00, at + 2 * i)],
      ["float32", "F32", (b: Buffer, at: number, i: number) => b.writeFloatLE(Number.POSITIVE_INFINITY, at + 4 * i)],
    ] as const) {
      const dir = join(root, `gate-nan-${dtype}`);
      const g = await generateCheckpoint({
        family: "mixtral",
        dir,
        layers: 1,
        hiddenSize: 8,
        intermediateSize: 6,
        dtype,
      });
      const key = gateKey(g.spec, 0);
      const path = join(dir, SINGLE_FILE);
      const file = await SafetensorsFile.open(path);
      const info = file.info(key);
      await file.close();
      expect(info?.dtype).toBe(st);
      const bytes = await readFile(path);
      write(bytes, info?.begin ?? 0, 2 * 8 + 5); // row 2, column 5
      await writeFile(path, bytes);
      const ckpt = await openCheckpoint(dir);
      const got = dtype === "float16" ? "-Infinity" : dtype === "float32" ? "Infinity" : "NaN";
      const msg = `${path}: tensor ${key}[2, 5] (expert 2, column 5): must be finite, got ${got}`;
      await expectRejects(ckpt.readGate(0), "FAILED_PRECONDITION", new RegExp(`^${escapeRegExp(msg)}$`));
      await ckpt.close();
    }
    // the largest finite values and subnormals are finite
    const m = (dtype: ModelSpec["dtype"], data: number[]) => ({
      dtype,
      rows: 1,
      cols: data.length,
      data: new Uint8Array(data),
    });
    expect(firstNonFinite(m("bfloat16", [0x7f, 0x7f, 0x01, 0x00, 0x80, 0xff]))).toBe(2);
    expect(firstNonFinite(m("float16", [0xff, 0x7b, 0x01, 0x00]))).toBe(-1);
    expect(firstNonFinite(m("float32", [0xff, 0xff, 0x7f, 0x7f, 0x00, 0x00, 0x80, 0xff]))).toBe(1);
  });

  it("a config.json larger than any real one is refused by its size, before it is read", async () => {
    const dir = join(root, "huge-config");
    await generateCheckpoint({ family: "mixtral", dir, layers: 1, hiddenSize: 8, intermediateSize: 6 });
    const path = join(dir, "config.json");
    await truncate(path, 17 * 2 ** 20); // a valid JSON object padded with NULs to 17 MiB
    await expectRejects(
      openCheckpoint(dir),
      "FAILED_PRECONDITION",
      new RegExp(`^${escapeRegExp(path)}: 17825792 bytes, more than the 16777216 a config\\.json may have$`),
    );
  });

  describe("config.json against the tensors (checkConfigAgainstTensors)", () => {
    async function withConfig(name: string, shards: number, edit: (c: Record<string, unknown>) => void) {
      const dir = join(root, `cfg-${name}`);
      await rm(dir, { recursive: true, force: true });
      await generateCheckpoint({
        family: "qwen2-moe",
        dir,
        layers: 3,
        experts: 8,
        hiddenSize: 8,
        intermediateSize: 6,
        shards,
      });
      const path = join(dir, "config.json");
      const c = JSON.parse(await readFile(path, "utf8"));
      edit(c);
      await writeFile(path, JSON.stringify(c));
      return dir;
    }
    async function check(dir: string, experts = true) {
      const ckpt = await openCheckpoint(dir);
      try {
        await checkConfigAgainstTensors(ckpt, { experts });
      } finally {
        await ckpt.close();
      }
    }

    it("passes a checkpoint as generated, sharded or not", async () => {
      await check(await withConfig("ok1", 1, () => {}));
      await check(await withConfig("ok3", 3, () => {}));
    });

    it("an expert count the gate does not have names the key and the gate", async () => {
      for (const shards of [1, 3]) {
        const dir = await withConfig(`e16-${shards}`, shards, (c) => {
          c.num_experts = 16;
        });
        const gate = "model.layers.0.mlp.gate.weight";
        const ckpt = await openCheckpoint(dir);
        const file = join(dir, ckpt.fileOf(gate) ?? "");
        await ckpt.close();
        await expectRejects(
          check(dir),
          "FAILED_PRECONDITION",
          new RegExp(
            `^${escapeRegExp(`${join(dir, "config.json")}: num_experts (16) and hidden_size (8) say tensor ${gate} is [16, 8], but ${file} has it as [8, 8]`)}$`,
          ),
        );
      }
    });

    it("a gate that agrees but a missing last expert, a wrong intermediate size, a missing last layer", async () => {
      const expert7 = "model.layers.0.mlp.experts.7.gate_proj.weight";
      // the gate and the config say 8 experts, the index has lost expert 7
      const dir = await withConfig("no-e7", 3, () => {});
      const index = JSON.parse(await readFile(join(dir, INDEX_FILE), "utf8"));
      delete index.weight_map[expert7];
      await writeFile(join(dir, INDEX_FILE), JSON.stringify(index));
      await expectRejects(
        check(dir),
        "FAILED_PRECONDITION",
        new RegExp(
          `^${escapeRegExp(`${join(dir, "config.json")}: num_experts is 8, but tensor ${expert7} is not in the weight_map of ${join(dir, INDEX_FILE)}`)}$`,
        ),
      );
      await check(dir, false); // the router's share has no routed experts to check

      const inter = await withConfig("inter", 1, (c) => {
        c.moe_intermediate_size = 12;
        c.shared_expert_intermediate_size = 12;
      });
      await expectRejects(
        check(inter),
        "FAILED_PRECONDITION",
        new RegExp(
          `^${escapeRegExp(`${join(inter, "config.json")}: moe_intermediate_size (12) and hidden_size (8) say tensor ${expert7} is [12, 8], but ${join(inter, SINGLE_FILE)} has it as [6, 8]`)}$`,
        ),
      );

      const layers = await withConfig("layers", 1, (c) => {
        c.num_hidden_layers = 40;
        c.mlp_only_layers = [];
      });
      await expectRejects(
        check(layers, false),
        "FAILED_PRECONDITION",
        new RegExp(
          `^${escapeRegExp(`${join(layers, "config.json")}: num_hidden_layers is 40: layer 39 is an MoE layer, but tensor model.layers.39.mlp.gate.weight is not in ${join(layers, SINGLE_FILE)}`)}$`,
        ),
      );
    });
  });
});
