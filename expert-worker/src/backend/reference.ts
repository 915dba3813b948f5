// TypeScript reference backend: @switchyard/moe's referenceExpertFFN (fp32 oracle) behind ExpertBackend.
// It is the fallback when the native addon is not built and the oracle the native backends are tested against.
// It computes on the event loop, one slice at a time, yielding between slices so aborts and other calls get in.

import { type ExpertFFNWeights, expertToFloat32, referenceExpertFFN } from "@switchyard/moe";
import { bytesToFloat32, valuesToBytes } from "@switchyard/protocol";
import { abortError } from "../queue.js";
import {
  checkExpertWeights,
  type ExpertBackend,
  type ExpertWeights,
  type PreparedExpert,
  type RunRequest,
} from "./types.js";

class ReferencePrepared implements PreparedExpert {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly bytes: number;
  constructor(readonly w: ExpertFFNWeights) {
    this.hiddenSize = w.hidden;
    this.intermediateSize = w.intermediate;
    this.bytes = (w.gate.byteLength + w.up.byteLength + w.down.byteLength) | 0;
  }
}

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

export class ReferenceBackend implements ExpertBackend {
  readonly name = "cpu-reference" as const;
  readonly kind = "cpu" as const;

  describe(): string {
    return "cpu-reference (TypeScript referenceExpertFFN, single-threaded)";
  }

  async prepare(w: ExpertWeights): Promise<PreparedExpert> {
    checkExpertWeights(w);
    // Copies: the checkpoint's read buffers are not kept alive by the cache.
    const f = expertToFloat32(w);
    return new ReferencePrepared({ ...f, gate: f.gate.slice(), up: f.up.slice(), down: f.down.slice() });
  }

  async run(req: RunRequest): Promise<Uint8Array> {
    const { signal } = req;
    const x = bytesToFloat32(req.tokens, req.dtype);
    const out = new Float32Array(req.rows * req.cols);
    const part = new Float32Array(req.rows * req.cols);
    for (const s of req.slices) {
      if (signal?.aborted) throw abortError(signal);
      if (s.count === 0) continue;
      if (!(s.expert instanceof ReferencePrepared)) throw new Error("slice expert was not prepared by cpu-reference");
      const w = s.expert.w;
      referenceExpertFFN(x, req.cols, [{ expert: 0, offset: s.offset, count: s.count }], () => w, req.rowWeights, part);
      out.set(part.subarray(s.offset * req.cols, (s.offset + s.count) * req.cols), s.offset * req.cols);
      await yieldToLoop();
    }
    if (signal?.aborted) throw abortError(signal);
    return valuesToBytes(out, req.dtype);
  }
}
