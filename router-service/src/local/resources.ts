// What a local run needs before it starts: the checkpoint on disk, and in memory the workers' experts and the
// reference's weights. At --size full these are tens of gigabytes (DeepSeek-V3: 45 GB of experts, 90 GB of fp32
// reference, 45 GB packed), so a run that cannot fit says so up front, naming the figures, instead of being killed for memory
// halfway through generating or loading. Pure: the caller passes the machine's sizes.

import { expertWeightBytes, type ModelSpec, moeLayers, weightBytesPerElement } from "@switchyard/moe";
import { referenceBytes } from "./verifier-pool.js";

export interface RunFootprint {
  /** bytes of expert tensors the checkpoint holds */
  checkpoint: number;
  /** bytes the workers hold: every (layer, expert) once, plus the redundant copies of the plan (and the shared
   * expert's slices where the workers run it) */
  workers: number;
  /** fp32 bytes the reference threads share */
  reference: number;
  /** the same with the experts packed (kept 16-bit; verifier-pool.ts), or null for an fp32 checkpoint */
  referencePacked: number | null;
}

export function runFootprint(spec: ModelSpec, redundantPerLayer: number, sharedOnWorkers = false): RunFootprint {
  const layers = moeLayers(spec).length;
  const expert = expertWeightBytes(spec);
  // counted as referenceBytes counts it: the shared experts run as one MLP, sharedIntermediateSize wide in all
  const shared =
    spec.sharedExperts > 0 ? 3 * spec.hiddenSize * spec.sharedIntermediateSize * weightBytesPerElement(spec.dtype) : 0;
  return {
    checkpoint: layers * (spec.experts * expert + shared),
    workers: layers * ((spec.experts + redundantPerLayer) * expert + (sharedOnWorkers ? shared : 0)),
    reference: referenceBytes(spec),
    referencePacked: spec.dtype === "float32" ? null : referenceBytes(spec, true),
  };
}

/** A run that cannot fit this machine: the message says why; no stack trace is needed. */
export class WontFitError extends Error {}

const gb = (b: number) => `${(b / 1e9).toFixed(1)} GB`;

/**
 * Throws a message naming the figures when the run cannot fit: memory for the workers' experts and the reference
 * beyond 90% of the machine's, or (when the checkpoint is still to be generated) disk beyond what is free. Returns
 * whether the reference must keep its experts packed to fit (it does only then: widening per expert costs time).
 */
export function checkRunFits(
  what: string,
  f: RunFootprint,
  machine: { totalMemory: number; freeDisk: number | null; generating: boolean },
): { packed: boolean } {
  const limit = 0.9 * machine.totalMemory;
  const packed = f.workers + f.reference > limit && f.referencePacked !== null;
  const reference = packed ? (f.referencePacked as number) : f.reference;
  const memory = f.workers + reference;
  if (memory > limit) {
    throw new WontFitError(
      `${what}: the workers' experts (${gb(f.workers)}) and the reference's weights (${gb(reference)}${packed ? ", packed in 16 bits" : " in fp32"}) need ${gb(memory)} of memory; this machine has ${gb(machine.totalMemory)}. Pick a smaller --size or family.`,
    );
  }
  if (machine.generating && machine.freeDisk !== null && f.checkpoint > machine.freeDisk) {
    throw new WontFitError(
      `${what}: the checkpoint needs ${gb(f.checkpoint)} of disk under .cache/checkpoints; ${gb(machine.freeDisk)} is free.`,
    );
  }
  return { packed };
}
