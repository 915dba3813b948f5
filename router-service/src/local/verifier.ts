// Verification thread of the local mode: recomputes every answer with the in-process fp32 reference of the whole
// MoE block (packages/moe referenceMoeBlock on the same checkpoint) off the driver's event loop, so checking does
// not distort the latencies being measured.

import { parentPort, workerData } from "node:worker_threads";
import {
  gateConfigFromSpec,
  type MoeLayerWeights,
  openCheckpoint,
  readLayerFloat32,
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

export interface VerifierInit {
  checkpoint: string;
  topK: number | null;
  topP: number | null;
  maxK: number | null;
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

async function run(init: VerifierInit): Promise<void> {
  const ckpt = await openCheckpoint(init.checkpoint);
  const spec = ckpt.spec;
  const layers = new Map<number, MoeLayerWeights>();
  const weightsOf = async (l: number) => {
    let w = layers.get(l);
    if (!w) {
      w = await readLayerFloat32(ckpt, l);
      layers.set(l, w);
    }
    return w;
  };
  const gate = { ...gateConfigFromSpec(spec), ...(init.topK !== null ? { topK: init.topK } : {}) };
  let chain = Promise.resolve();
  parentPort!.on("message", (job: VerifyJob | "close") => {
    if (job === "close") {
      chain.then(() => ckpt.close()).then(() => process.exit(0));
      return;
    }
    chain = chain.then(async () => {
      const w = await weightsOf(job.layer);
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
  });
  parentPort!.postMessage("ready");
}

if (parentPort && workerData) void run(workerData as VerifierInit);
