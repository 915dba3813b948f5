// Verification thread of the local mode: recomputes answers with the in-process fp32 reference of the whole MoE block
// (packages/moe referenceMoeBlock on the same checkpoint) off the driver's event loop, so checking does not distort
// the latencies being measured. The weights come in `workerData`, backed by SharedArrayBuffers that every thread of
// the pool reads (verifier-pool.ts loads them once).

import { parentPort, workerData } from "node:worker_threads";
import {
  gateConfigFromSpec,
  type ModelSpec,
  type MoeLayerWeights,
  referenceMoeBlock,
  routerLogits,
  softmaxTopP,
} from "@switchyard/moe";

export interface VerifyJob {
  id: number;
  layer: number;
  /** hidden as sent (already rounded to the request dtype), fp32 [T, d] */
  hidden: Float32Array;
  /** router's answer widened to fp32 */
  output: Float32Array;
}

export interface VerifyResult {
  id: number;
  relErr: number;
}

/** The routing the router was configured with (its RoutingPolicy's gating), which the reference must follow. */
export interface VerifierInit {
  topK: number | null;
  topP: number | null;
  maxK: number | null;
}

export interface VerifierData {
  init: VerifierInit;
  spec: ModelSpec;
  /** MoE layer index -> its fp32 weights */
  layers: Record<number, MoeLayerWeights>;
}

/** max |a - b| / max |b|: error relative to the answer's scale. */
export function relError(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= num)) num = e; // NaN propagates
    const m = Math.abs(b[i]);
    if (m > den) den = m;
  }
  return num / Math.max(den, 1e-30);
}

function run({ init, spec, layers }: VerifierData): void {
  const gate = { ...gateConfigFromSpec(spec), ...(init.topK !== null ? { topK: init.topK } : {}) };
  parentPort!.on("message", (job: VerifyJob | "close") => {
    if (job === "close") process.exit(0);
    const w = layers[job.layer];
    if (!w) throw new Error(`verifier: no weights for layer ${job.layer}`);
    let routing: ReturnType<typeof softmaxTopP> | undefined;
    if (init.topP !== null) {
      const logits = routerLogits(job.hidden, w.gate, spec.hiddenSize);
      const maxK = Math.min(spec.experts, init.maxK ?? Math.max(gate.topK, 2 * spec.topK));
      routing = softmaxTopP(logits, spec.experts, { topP: init.topP, maxK, normalize: true });
    }
    const ref = referenceMoeBlock(spec, w, job.hidden, routing ? { routing } : { gate });
    const res: VerifyResult = { id: job.id, relErr: relError(job.output, ref.output) };
    parentPort!.postMessage(res);
  });
  parentPort!.postMessage("ready");
}

if (parentPort && workerData) run(workerData as VerifierData);
