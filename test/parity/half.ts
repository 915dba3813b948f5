// Parity with transformers' blocks run in bf16, as a bf16 model runs them (the fp32 parity is parity.ts).
//
//   prepare DIR            one checkpoint per HALF_CASES entry + DIR/inputs.safetensors (bf16 hidden states)
//   compare DIR OUTS JSON  our gate and block on the same bf16 hidden states against transformers_half.py's outputs
//
// In a bf16 model, Mixtral's and Qwen's gates round their logits to bf16 (F.linear in the model's dtype) before the
// fp32 softmax; DeepSeek-V3's gate is fp32. Ours now does the same (gateLogitsDtype); before, it kept fp32 logits.
// For each, the tokens whose experts differ from transformers', and how many of those are ties in transformers' own
// gate values (where the expert it keeps is whichever torch.topk returns first: the lower id on CUDA, another order on
// the CPU); and our gate on transformers' own logits, where only ties can differ.
// Run: see test/parity/README.md.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  applyGate,
  gateConfigFromSpec,
  gateLogitsDtype,
  gateWeightsDtype,
  generateCheckpoint,
  openCheckpoint,
  readLayerFloat32,
  referenceMoeBlock,
  type SafetensorsDType,
  SafetensorsFile,
  sharedGateScale,
  writeSafetensors,
} from "@switchyard/moe";
import { bf16ToF32, bytesToFloat32, DType } from "@switchyard/protocol";
import { HALF_CASES, HALF_TOKENS, halfHiddenFor } from "./half-cases.js";

/** HALF_CASES, or those named in a comma-separated list (a run that carries fewer bytes to another machine). */
function pick(names?: string): typeof HALF_CASES {
  if (!names) return HALF_CASES;
  const want = names.split(",");
  const unknown = want.filter((n) => !HALF_CASES.some((c) => c.name === n));
  if (unknown.length) throw new Error(`unknown case(s) ${unknown.join(", ")}`);
  return HALF_CASES.filter((c) => want.includes(c.name));
}

async function prepare(dir: string, names?: string): Promise<void> {
  const inputs = [];
  for (const c of pick(names)) {
    const g = await generateCheckpoint({ ...c, dir: join(dir, c.name) });
    const hidden = halfHiddenFor(c);
    inputs.push({
      name: c.name,
      dtype: "BF16" as const,
      shape: [HALF_TOKENS, g.spec.hiddenSize],
      data: new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength),
    });
    console.log(`${c.name}: ${g.files.join(", ")} (${(g.totalBytes / 2 ** 20).toFixed(1)} MiB)`);
  }
  await writeSafetensors(join(dir, "inputs.safetensors"), inputs);
}

const SAFETENSORS_FLOATS: Record<string, DType> = { F32: DType.FLOAT32, BF16: DType.BFLOAT16, F16: DType.FLOAT16 };

async function readF32(file: SafetensorsFile, name: string): Promise<Float32Array> {
  const { info, data } = await file.read(name);
  const dtype = SAFETENSORS_FLOATS[info.dtype];
  if (dtype === undefined) throw new Error(`${name}: dtype ${info.dtype}, expected F32, BF16 or F16`);
  return bytesToFloat32(data, dtype, true);
}

function asI32(data: Uint8Array): Int32Array {
  return new Int32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
}

/** The k ids of row t as a sorted list (transformers' DeepSeek-V3 gate returns them unsorted). */
function rowSet(ids: Int32Array, t: number, k: number): number[] {
  return Array.from(ids.subarray(t * k, (t + 1) * k)).sort((a, b) => a - b);
}

function sameSet(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * The values transformers' gate ranks by, per row: the logits for softmax gates (softmax keeps their order), the
 * corrected sigmoid scores for DeepSeek-V3 (group masking aside: a row whose kept groups differ shows as "not tied").
 */
function choiceValues(logits: Float32Array, bias: Float32Array | undefined, sigmoid: boolean): Float32Array {
  if (!sigmoid) return logits;
  const E = bias?.length ?? 0;
  const v = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) v[i] = 1 / (1 + Math.exp(-logits[i])) + (bias ? bias[i % E] : 0);
  return v;
}

/** A row's selections differ only at a tie: every id in one set and not the other has the same gate value. */
function differsOnlyAtTie(vals: Float32Array, E: number, t: number, a: number[], b: number[]): boolean {
  const onlyA = a.filter((x) => !b.includes(x));
  const onlyB = b.filter((x) => !a.includes(x));
  const v0 = vals[t * E + onlyA[0]];
  return [...onlyA, ...onlyB].every((x) => vals[t * E + x] === v0);
}

async function compare(dir: string, outs: string, jsonPath: string): Promise<void> {
  const info = JSON.parse(await readFile(join(outs, "transformers-half-info.json"), "utf8"));
  const cases: Record<string, unknown> = {};
  // the cases transformers ran (a run on another machine may carry fewer)
  for (const c of HALF_CASES.filter((c) => info.cases?.[c.name])) {
    const theirs = await SafetensorsFile.open(join(outs, `transformers-half-${c.name}.safetensors`));
    const ckpt = await openCheckpoint(join(dir, c.name));
    const spec = ckpt.spec;
    const w = await readLayerFloat32(ckpt, 0);
    await ckpt.close();
    const E = spec.experts;
    const k = spec.topK;
    const d = spec.hiddenSize;
    const T = HALF_TOKENS;
    const hidden = bf16ToF32(halfHiddenFor(c));
    const sigmoid = spec.scoring === "sigmoid";
    const cfg = gateConfigFromSpec(spec);

    const hfIds = asI32((await theirs.read(`${c.name}.ids`)).data);
    const hfWeights = await readF32(theirs, `${c.name}.weights`);
    const hfLogits = await readF32(theirs, `${c.name}.logits`);
    const hfOut = await readF32(theirs, `${c.name}.output`);
    const theirsSharedGate = theirs.info(`${c.name}.shared_gate`)
      ? await readF32(theirs, `${c.name}.shared_gate`)
      : undefined;
    await theirs.close();
    const hfVals = choiceValues(hfLogits, w.correctionBias, sigmoid);

    /** One way of ours against transformers, token by token. */
    const against = (routing: { ids: Int32Array; weights: Float32Array }, output?: Float32Array) => {
      let differ = 0;
      let atTie = 0;
      let maxWeightErr = 0;
      let numSame = 0;
      let denSame = 0;
      let numAll = 0;
      let denAll = 0;
      for (let t = 0; t < T; t++) {
        const hf = rowSet(hfIds, t, k);
        const o = rowSet(routing.ids, t, k);
        const same = sameSet(hf, o);
        if (!same) {
          differ++;
          if (differsOnlyAtTie(hfVals, E, t, o, hf)) atTie++;
        } else {
          for (let j = 0; j < k; j++) {
            const slot = routing.ids.subarray(t * k, (t + 1) * k).indexOf(hfIds[t * k + j]);
            maxWeightErr = Math.max(maxWeightErr, Math.abs(routing.weights[t * k + slot] - hfWeights[t * k + j]));
          }
        }
        if (!output) continue;
        let num = 0;
        let den = 0;
        for (let j = 0; j < d; j++) {
          num += (output[t * d + j] - hfOut[t * d + j]) ** 2;
          den += hfOut[t * d + j] ** 2;
        }
        numAll += num;
        denAll += den;
        if (same) {
          numSame += num;
          denSame += den;
        }
      }
      return {
        tokens_with_other_experts: differ,
        tokens_with_other_experts_pct: Number(((100 * differ) / T).toFixed(3)),
        of_which_transformers_gate_values_tied: atTie,
        max_abs_weight_err_same_experts: maxWeightErr,
        ...(output
          ? {
              rms_rel_output_err_same_experts: Math.sqrt(numSame / denSame),
              rms_rel_output_err_all_tokens: Math.sqrt(numAll / denAll),
            }
          : {}),
      };
    };

    // before: fp32 logits whatever the activations; now: the gate in the activations' dtype where the family's is
    const before = referenceMoeBlock(spec, w, hidden);
    const now = referenceMoeBlock(spec, w, hidden, { activations: "bfloat16" });
    // our gate on transformers' own logits: isolates the tie rule from the logits' precision
    const onTheirs = applyGate(
      hfLogits,
      E,
      { ...cfg, weightsDtype: gateWeightsDtype(spec, gateLogitsDtype(spec, "bfloat16")) },
      w.correctionBias,
    );
    let boundaryTies = 0;
    for (let t = 0; t < T; t++) {
      // transformers' own ambiguity: its k-th and (k+1)-th gate values are equal
      const row = Array.from(hfVals.subarray(t * E, (t + 1) * E)).sort((a, b) => b - a);
      if (row[k - 1] === row[k]) boundaryTies++;
    }
    // Qwen2-MoE's shared-expert scale, sigmoid(x . shared_expert_gate): ours in bf16 as transformers' (now) and fp32
    let sharedGate: Record<string, unknown> | undefined;
    if (w.sharedGate && theirsSharedGate) {
      const hf = theirsSharedGate;
      const vs = (ours: Float32Array) => {
        let differ = 0;
        let maxAbs = 0;
        for (let t = 0; t < T; t++) {
          if (ours[t] !== hf[t]) differ++;
          maxAbs = Math.max(maxAbs, Math.abs(ours[t] - hf[t]));
        }
        return { tokens_differing: differ, max_abs_err: maxAbs };
      };
      sharedGate = {
        transformers_dtype: info.cases?.[c.name]?.shared_gate_dtype,
        ours_now_in_activation_dtype: vs(sharedGateScale(spec, hidden, w.sharedGate, "bfloat16")),
        ours_before_fp32: vs(sharedGateScale(spec, hidden, w.sharedGate)),
      };
    }
    cases[c.name] = {
      family: spec.family,
      experts: E,
      top_k: k,
      hidden_size: d,
      tokens: T,
      transformers_gate_logits_dtype: info.cases?.[c.name]?.gate_logits_dtype,
      transformers_gate_weights_dtype: info.cases?.[c.name]?.gate_weights_dtype,
      tokens_where_transformers_gate_ties_at_top_k_pct: Number(((100 * boundaryTies) / T).toFixed(3)),
      ours_now_gate_in_activation_dtype: against(now.routing, now.output),
      ours_before_fp32_logits: against(before.routing, before.output),
      ours_gate_on_transformers_logits: against(onTheirs),
      ...(sharedGate ? { shared_expert_gate: sharedGate } : {}),
    };
    console.log(c.name, JSON.stringify(cases[c.name]));
  }
  const result = {
    what: "bf16 models: our router's gate (fp32 logits) and fp32 reference block against transformers' blocks run in the checkpoint's bf16, on the same bf16 hidden states; real models' gate shapes, tiny experts",
    measured_at: new Date().toISOString(),
    commands: [
      "npx tsx --conditions=switchyard-source test/parity/half.ts prepare .carry/half [CASE,...]",
      "python3 test/parity/transformers_half.py .carry/half OUT [--device cuda]",
      "npx tsx --conditions=switchyard-source test/parity/half.ts compare .carry/half OUT JSON",
    ],
    torch: info.torch,
    transformers: info.transformers,
    device: info.device,
    gpu: info.gpu,
    cases,
  };
  await writeFile(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
}

/**
 * Keeps what CI checks against (half-parity.test.ts, no torch there): transformers' ids and weights per case (and
 * Qwen2-MoE's shared-expert gate), from a run's OUTS, in DEST/selection.safetensors, with its info json. Cases the run
 * did not carry keep what DEST held for them (a run of one case replaces that case only).
 */
async function keep(outs: string, dest: string): Promise<void> {
  const info = JSON.parse(await readFile(join(outs, "transformers-half-info.json"), "utf8"));
  const ran = HALF_CASES.filter((c) => info.cases?.[c.name]);
  const tensors = [];
  const destFile = join(dest, "selection.safetensors");
  const destInfo = join(dest, "transformers-half-info.json");
  const old = await SafetensorsFile.open(destFile).catch(() => undefined);
  if (old) {
    for (const name of old.header.tensors.keys()) {
      if (ran.some((c) => name.startsWith(`${c.name}.`))) continue;
      const { info: ti, data } = await old.read(name);
      tensors.push({ name, dtype: ti.dtype as SafetensorsDType, shape: ti.shape, data: new Uint8Array(data) });
    }
    await old.close();
    const before = JSON.parse(await readFile(destInfo, "utf8"));
    info.cases = { ...before.cases, ...info.cases };
  }
  for (const c of ran) {
    const f = await SafetensorsFile.open(join(outs, `transformers-half-${c.name}.safetensors`));
    for (const part of ["ids", "weights", "shared_gate"]) {
      const name = `${c.name}.${part}`;
      if (part === "shared_gate" && !f.info(name)) continue;
      const { info: ti, data } = await f.read(name);
      tensors.push({ name, dtype: ti.dtype as SafetensorsDType, shape: ti.shape, data });
    }
    await f.close();
  }
  tensors.sort((a, b) => a.name.localeCompare(b.name));
  await mkdir(dest, { recursive: true });
  await writeSafetensors(destFile, tensors);
  await writeFile(destInfo, `${JSON.stringify(info, null, 2)}\n`);
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === "prepare" && (args.length === 1 || args.length === 2)) await prepare(args[0], args[1]);
else if (cmd === "compare" && args.length === 3) await compare(args[0], args[1], args[2]);
else if (cmd === "keep" && args.length === 2) await keep(args[0], args[1]);
else {
  console.error("usage: half.ts prepare DIR [CASE,...] | compare DIR OUTS JSON | keep OUTS DEST");
  process.exit(2);
}
