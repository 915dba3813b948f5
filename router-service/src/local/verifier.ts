// Verification thread of the local mode: recomputes answers with the in-process fp32 reference of the whole MoE block
// (packages/moe referenceMoeBlock on the same checkpoint) off the driver's event loop, so checking does not distort
// the latencies being measured. The weights come in `workerData`, backed by SharedArrayBuffers that every thread of
// the pool reads (verifier-pool.ts loads them once).

import { parentPort, workerData } from "node:worker_threads";
import {
  type ExpertFFNWeights,
  gateConfigFromSpec,
  gateLogitsDtype,
  gateWeightsDtype,
  type ModelSpec,
  type MoeLayerWeights,
  referenceMoeBlock,
  roundToDtype,
  routerLogits,
  softmaxTopP,
  type WeightDType,
} from "@switchyard/moe";
import { bf16ToF32, f16ToF32 } from "@switchyard/protocol";

export interface VerifyJob {
  id: number;
  layer: number;
  /** hidden as sent (already rounded to the request dtype), fp32 [T, d] */
  hidden: Float32Array;
  /** the dtype the request sent hidden in: the gate computes in it where the family's does (gateLogitsDtype) */
  activations: WeightDType;
  /** router's answer widened to fp32 */
  output: Float32Array;
}

export interface VerifyResult {
  id: number;
  relErr: number;
  /** why relErr is not a comparison of values (an answer of another length) */
  detail?: string;
}

/** The routing the router was configured with (its RoutingPolicy's gating), which the reference must follow. */
export interface VerifierInit {
  topK: number | null;
  topP: number | null;
  maxK: number | null;
}

/** An expert in the checkpoint's 16-bit form (verifier-pool.ts "packed"): bf16 or fp16 bits, [rows, cols] as fp32. */
export interface PackedExpert {
  packed: "bfloat16" | "float16";
  hidden: number;
  intermediate: number;
  gate: Uint16Array;
  up: Uint16Array;
  down: Uint16Array;
}

/** A MoE layer as the pool hands it over: MoeLayerWeights whose experts may be packed. */
export interface ReferenceLayer extends Omit<MoeLayerWeights, "experts" | "shared"> {
  experts: (ExpertFFNWeights | PackedExpert)[];
  shared?: ExpertFFNWeights | PackedExpert;
}

export interface VerifierData {
  init: VerifierInit;
  spec: ModelSpec;
  /** MoE layer index -> its weights (fp32, or experts packed) */
  layers: Record<number, ReferenceLayer>;
}

const isPacked = (w: ExpertFFNWeights | PackedExpert): w is PackedExpert => "packed" in w;

/** 16-bit bits -> fp32 values, exactly. */
const widenInto = (bits: Uint16Array, kind: PackedExpert["packed"], out: Float32Array): Float32Array =>
  kind === "float16" ? f16ToF32(bits, out) : bf16ToF32(bits, out);

/** Where packed experts are widened: one buffer for routed experts and one for the shared one, each remembering
 * which expert it holds (the reference asks for the same expert again, e.g. `if (!w.shared)` then its use). */
export class WidenScratch {
  private readonly slots = {
    routed: { owner: null as PackedExpert | null, w: null as ExpertFFNWeights | null },
    shared: { owner: null as PackedExpert | null, w: null as ExpertFFNWeights | null },
  };

  widen(p: PackedExpert, kind: "routed" | "shared"): ExpertFFNWeights {
    const slot = this.slots[kind];
    if (slot.owner === p && slot.w) return slot.w;
    const n = p.gate.length;
    const w =
      slot.w && slot.w.gate.length === n
        ? { ...slot.w, hidden: p.hidden, intermediate: p.intermediate }
        : {
            hidden: p.hidden,
            intermediate: p.intermediate,
            gate: new Float32Array(n),
            up: new Float32Array(n),
            down: new Float32Array(n),
          };
    widenInto(p.gate, p.packed, w.gate);
    widenInto(p.up, p.packed, w.up);
    widenInto(p.down, p.packed, w.down);
    slot.owner = p;
    slot.w = w;
    return w;
  }
}

/** One scratch per thread (a module instance per worker thread), shared by all layers. */
const threadScratch = new WidenScratch();

/**
 * The layer as referenceMoeBlock reads it. Packed experts become getters that widen the expert asked for into the
 * thread's scratch: the reference reads one routed expert's weights at a time and is done with them before it asks
 * for the next (referenceExpertFFN), so one buffer for routed experts and one for the shared expert are enough.
 */
export function unpackLayer(layer: ReferenceLayer, scratch: WidenScratch = threadScratch): MoeLayerWeights {
  const experts: ExpertFFNWeights[] = new Array(layer.experts.length);
  layer.experts.forEach((w, e) => {
    if (!isPacked(w)) experts[e] = w;
    else Object.defineProperty(experts, e, { get: () => scratch.widen(w, "routed") });
  });
  const out: MoeLayerWeights = { ...layer, experts, shared: undefined };
  const sh = layer.shared;
  if (sh && isPacked(sh)) Object.defineProperty(out, "shared", { get: () => scratch.widen(sh, "shared") });
  else out.shared = sh;
  return out;
}

/**
 * max |a - b| / max |b|: error relative to the answer's scale. An answer of another length than the reference's is
 * infinitely wrong: comparing the values it has would pass an empty or a shortened one.
 */
export function relError(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    // a NaN anywhere is the answer's error: kept as num, a later value's `e <= NaN` (false) would overwrite it
    if (Number.isNaN(e)) return Number.NaN;
    if (e > num) num = e;
    const m = Math.abs(b[i]);
    if (m > den) den = m;
  }
  return num / Math.max(den, 1e-30);
}

function run({ init, spec, layers: given }: VerifierData): void {
  const gate = { ...gateConfigFromSpec(spec), ...(init.topK !== null ? { topK: init.topK } : {}) };
  const layers: Record<number, MoeLayerWeights> = {};
  for (const [l, w] of Object.entries(given)) layers[Number(l)] = unpackLayer(w);
  parentPort!.on("message", (job: VerifyJob | "close") => {
    if (job === "close") process.exit(0);
    const w = layers[job.layer];
    if (!w) throw new Error(`verifier: no weights for layer ${job.layer}`);
    let routing: ReturnType<typeof softmaxTopP> | undefined;
    if (init.topP !== null) {
      const logitsDtype = gateLogitsDtype(spec, job.activations);
      const logits = roundToDtype(routerLogits(job.hidden, w.gate, spec.hiddenSize), logitsDtype);
      const maxK = Math.min(spec.experts, init.maxK ?? Math.max(gate.topK, 2 * spec.topK));
      routing = softmaxTopP(logits, spec.experts, {
        topP: init.topP,
        maxK,
        normalize: gate.normTopKProb, // as the router (checkpoint-model.ts): the model's norm_topk_prob
        routedScalingFactor: spec.routedScalingFactor,
        weightsDtype: gateWeightsDtype(spec, logitsDtype),
      });
    }
    const ref = referenceMoeBlock(spec, w, job.hidden, {
      ...(routing ? { routing } : { gate }),
      activations: job.activations,
    });
    const res: VerifyResult = { id: job.id, relErr: relError(job.output, ref.output) };
    if (job.output.length !== ref.output.length)
      res.detail = `the answer has ${job.output.length} values, the reference ${ref.output.length}`;
    parentPort!.postMessage(res);
  });
  parentPort!.postMessage("ready");
}

if (parentPort && workerData) run(workerData as VerifierData);
