#!/usr/bin/env node
// Write a seeded random checkpoint (config.json + safetensors, Hugging Face layout).
//   node packages/moe/dist/cli/generate-checkpoint.js --family mixtral --dir /tmp/ckpt [--seed 0] [--layers 2]
//     [--experts 8] [--hidden-size 1024] [--intermediate-size 3584] [--top-k 2] [--dtype bfloat16] [--shards 1]
//     [--shared-experts N] [--shared-intermediate-size N] [--n-group N] [--topk-group N]
//     [--routed-scaling-factor X] [--norm-topk-prob true|false] [--first-dense-layers N]

import { parseArgs } from "node:util";
import { generateCheckpoint } from "../generate.js";
import { MODEL_FAMILIES, type ModelFamily, type ModelSpec, WEIGHT_DTYPES, type WeightDType } from "../spec.js";

const INT_FLAGS: Record<string, keyof ModelSpec | "seed" | "shards"> = {
  seed: "seed",
  layers: "layers",
  experts: "experts",
  "hidden-size": "hiddenSize",
  "intermediate-size": "intermediateSize",
  "top-k": "topK",
  shards: "shards",
  "shared-experts": "sharedExperts",
  "shared-intermediate-size": "sharedIntermediateSize",
  "n-group": "nGroup",
  "topk-group": "topkGroup",
  "first-dense-layers": "firstDenseLayers",
};

export async function main(argv: string[]): Promise<void> {
  const options: Record<string, { type: "string" }> = {
    family: { type: "string" },
    dir: { type: "string" },
    dtype: { type: "string" },
    "routed-scaling-factor": { type: "string" },
    "norm-topk-prob": { type: "string" },
  };
  for (const k of Object.keys(INT_FLAGS)) options[k] = { type: "string" };
  const { values } = parseArgs({ args: argv, options, strict: true });
  const family = values.family as string | undefined;
  if (!family || !MODEL_FAMILIES.includes(family as ModelFamily))
    throw new Error(`--family: one of ${MODEL_FAMILIES.join(", ")}`);
  if (!values.dir) throw new Error("--dir: required");
  const opts: Record<string, unknown> = { family, dir: values.dir };
  for (const [flag, key] of Object.entries(INT_FLAGS)) {
    const v = values[flag] as string | undefined;
    if (v === undefined) continue;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${flag}: must be a non-negative integer, got ${v}`);
    opts[key] = n;
  }
  if (values.dtype !== undefined) {
    if (!WEIGHT_DTYPES.includes(values.dtype as WeightDType))
      throw new Error(`--dtype: one of ${WEIGHT_DTYPES.join(", ")}`);
    opts["dtype"] = values.dtype;
  }
  const rsf = values["routed-scaling-factor"] as string | undefined;
  if (rsf !== undefined) opts["routedScalingFactor"] = Number(rsf);
  const norm = values["norm-topk-prob"] as string | undefined;
  if (norm !== undefined) {
    if (norm !== "true" && norm !== "false") throw new Error("--norm-topk-prob: true or false");
    opts["normTopKProb"] = norm === "true";
  }
  const t0 = performance.now();
  const r = await generateCheckpoint(opts as unknown as Parameters<typeof generateCheckpoint>[0]);
  const s = r.spec;
  console.log(
    `wrote ${r.dir}: ${s.family} layers=${s.layers} experts=${s.experts} d=${s.hiddenSize} f=${s.intermediateSize} ` +
      `top-k=${s.topK} ${s.dtype}, ${r.files.length} file(s), ${(r.totalBytes / 2 ** 20).toFixed(1)} MiB in ` +
      `${((performance.now() - t0) / 1000).toFixed(2)} s`,
  );
}

main(process.argv.slice(2)).catch((e: unknown) => {
  console.error(`generate-checkpoint: ${(e as Error).message}`);
  process.exit(2);
});
