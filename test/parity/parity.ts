// Parity of our fp32 reference MoE block with Hugging Face transformers' blocks.
//
//   prepare DIR            write one small checkpoint per family + DIR/inputs.safetensors (fp32 hidden states)
//   compare DIR OUTS JSON  run referenceMoeBlock on the same checkpoints and inputs, compare with transformers'
//                          outputs (OUTS/transformers-outputs.safetensors from transformers_parity.py), write JSON
//
// Run with: npx tsx --conditions=switchyard-source test/parity/parity.ts prepare .carry/parity
// (transformers_parity.py runs where torch + transformers are installed; see test/parity/README.md).

import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  generateCheckpoint,
  openCheckpoint,
  readLayerFloat32,
  referenceMoeBlock,
  SafetensorsFile,
  writeSafetensors,
} from "@switchyard/moe";
import { CASES, hiddenFor, TOKENS } from "./cases.js";

async function prepare(dir: string): Promise<void> {
  const inputs = [];
  for (const c of CASES) {
    const g = await generateCheckpoint({ ...c, dir: join(dir, c.name) });
    inputs.push({
      name: c.name,
      dtype: "F32" as const,
      shape: [TOKENS, g.spec.hiddenSize],
      data: new Uint8Array(hiddenFor(c).buffer),
    });
    console.log(`${c.name}: ${g.files.join(", ")} (${(g.totalBytes / 2 ** 20).toFixed(1)} MiB)`);
  }
  await writeSafetensors(join(dir, "inputs.safetensors"), inputs);
}

async function compare(dir: string, outs: string, jsonPath: string): Promise<void> {
  const theirs = await SafetensorsFile.open(join(outs, "transformers-outputs.safetensors"));
  const info = JSON.parse(await readFile(join(outs, "transformers-info.json"), "utf8"));
  const families: Record<string, unknown> = {};
  let worst = 0;
  for (const c of CASES) {
    const ckpt = await openCheckpoint(join(dir, c.name));
    const w = await readLayerFloat32(ckpt, 0);
    const hidden = hiddenFor(c);
    const ours = referenceMoeBlock(ckpt.spec, w, hidden).output;
    await ckpt.close();
    const { info: ti, data } = await theirs.read(c.name);
    if (ti.dtype !== "F32" || ti.shape.join() !== [TOKENS, ckpt.spec.hiddenSize].join())
      throw new Error(
        `${c.name}: transformers output is ${ti.dtype} [${ti.shape}], expected F32 [${TOKENS}, ${ckpt.spec.hiddenSize}]`,
      );
    const ref = new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
    let maxAbs = 0;
    let maxRef = 0;
    let maxElemRel = 0;
    let num = 0;
    let den = 0;
    for (let i = 0; i < ref.length; i++) {
      const e = Math.abs(ours[i] - ref[i]);
      maxAbs = Math.max(maxAbs, e);
      maxRef = Math.max(maxRef, Math.abs(ref[i]));
      maxElemRel = Math.max(maxElemRel, e / Math.max(Math.abs(ref[i]), 1e-3));
      num += e * e;
      den += ref[i] * ref[i];
    }
    const rel = maxAbs / maxRef;
    worst = Math.max(worst, rel);
    families[c.name] = {
      spec: ckpt.spec,
      tokens: TOKENS,
      transformers_block: info.families?.[c.name]?.class,
      transformers_weight_layout: info.families?.[c.name]?.weight_layout,
      ...(info.families?.[c.name]?.group_mask_fill
        ? { transformers_group_mask_fill: info.families[c.name].group_mask_fill }
        : {}),
      max_abs_err: maxAbs,
      max_abs_output: maxRef,
      max_rel_err: rel,
      max_elementwise_rel_err: maxElemRel,
      rms_rel_err: Math.sqrt(num / den),
    };
    console.log(
      `${c.name}: max_abs_err ${maxAbs.toExponential(2)} (max |y| ${maxRef.toFixed(3)}), max_rel_err ${rel.toExponential(2)}`,
    );
  }
  await theirs.close();
  const tolerance = 1e-4;
  const result = {
    what: "max error of @switchyard/moe referenceMoeBlock (fp32) against transformers' MoE blocks (fp32, CPU) on the same generated checkpoints and hidden states",
    measured_at: new Date().toISOString(),
    commands: [
      "npx tsx --conditions=switchyard-source test/parity/parity.ts prepare .carry/parity",
      "python3 test/parity/transformers_parity.py .carry/parity $OUT   # on the GPU machine (CPU only), torch + transformers",
      "npx tsx --conditions=switchyard-source test/parity/parity.ts compare .carry/parity <OUT> bench/results/transformers-parity.json",
    ],
    torch: info.torch,
    transformers: info.transformers,
    torch_topk_ties: info.torch_topk_ties,
    note_ties:
      "torch.topk on the CPU returns tied values in no fixed order (see torch_topk_ties); our gates let the lower expert id win. Outputs differ only at exact ties.",
    tolerance_max_rel_err: tolerance,
    pass: worst <= tolerance,
    families,
  };
  await writeFile(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
  if (worst > tolerance) {
    console.error(`parity FAILED: worst max_rel_err ${worst.toExponential(2)} > ${tolerance}`);
    process.exitCode = 1;
  }
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === "prepare" && args.length === 1) await prepare(args[0]);
else if (cmd === "compare" && args.length === 3) await compare(args[0], args[1], args[2]);
else {
  console.error("usage: parity.ts prepare DIR | compare DIR OUTS JSON");
  process.exit(2);
}
