// The local mode's reference threads. The layers' weights are widened to fp32 once, into SharedArrayBuffers that
// every thread reads: a full-size Mixtral layer is 5.6 GB in fp32, too much to copy into each thread. Where fp32 does
// not fit beside the workers (DeepSeek-V3 at full size: 90 GB), the experts stay in the checkpoint's 16-bit form
// ("packed") and each thread widens the one expert it is computing into its own scratch: the same fp32 values, so the
// same answers, at half the memory and some time per expert.
//
// "all" checks every answer: jobs wait in a queue here for a free thread. "sample" takes an answer only when a thread
// is idle and lets the rest go unchecked. At full size the JavaScript reference takes ~0.6 s per Mixtral token, far
// slower than a GPU worker answers, so checking everything would either hold the load back or queue gigabytes of
// answers; the final table says how many answers were checked out of how many.

import { Worker } from "node:worker_threads";
import {
  type Checkpoint,
  type ExpertFFNWeights,
  type ExpertWeights,
  expertToFloat32,
  moeLayers,
  toFloat32,
  type WeightMatrix,
} from "@switchyard/moe";
import type { PackedExpert, ReferenceLayer, VerifierData, VerifyJob, VerifyResult } from "./verifier.js";

export type VerifyMode = "all" | "sample";

function shared(a: Float32Array): Float32Array {
  const s = new Float32Array(new SharedArrayBuffer(a.byteLength));
  s.set(a);
  return s;
}

function sharedExpert(w: ExpertFFNWeights): ExpertFFNWeights {
  return { ...w, gate: shared(w.gate), up: shared(w.up), down: shared(w.down) };
}

function sharedBits(m: WeightMatrix): Uint16Array {
  const s = new Uint16Array(new SharedArrayBuffer(m.data.byteLength));
  s.set(new Uint16Array(m.data.buffer, m.data.byteOffset, m.data.byteLength / 2));
  return s;
}

/** An expert as the checkpoint stores it (bf16 or fp16 bits) on SharedArrayBuffers. */
function packedExpert(w: ExpertWeights): PackedExpert {
  const dtype = w.gate.dtype;
  if (dtype === "float32") throw new Error("packed reference weights need a 16-bit checkpoint");
  return {
    packed: dtype,
    hidden: w.gate.cols,
    intermediate: w.gate.rows,
    gate: sharedBits(w.gate),
    up: sharedBits(w.up),
    down: sharedBits(w.down),
  };
}

/**
 * Every MoE layer on SharedArrayBuffers, read expert by expert so that only one expert is held twice: in fp32, or
 * with `packed` the experts in the checkpoint's 16-bit form (the routers and biases stay fp32; they are small).
 */
export async function readSharedLayers(ckpt: Checkpoint, packed = false): Promise<Record<number, ReferenceLayer>> {
  const out: Record<number, ReferenceLayer> = {};
  const expertOf = (w: ExpertWeights) => (packed ? packedExpert(w) : sharedExpert(expertToFloat32(w)));
  for (const l of moeLayers(ckpt.spec)) {
    const experts: (ExpertFFNWeights | PackedExpert)[] = [];
    for (let e = 0; e < ckpt.spec.experts; e++) experts.push(expertOf(await ckpt.readExpert(l, e)));
    const w: ReferenceLayer = { gate: shared(toFloat32(await ckpt.readGate(l))), experts };
    const sh = await ckpt.readSharedExpert(l);
    if (sh) w.shared = expertOf(sh);
    const sg = await ckpt.readSharedExpertGate(l);
    if (sg) w.sharedGate = shared(toFloat32(sg));
    const bias = await ckpt.readCorrectionBias(l);
    if (bias) w.correctionBias = shared(toFloat32(bias));
    out[l] = w;
  }
  return out;
}

/**
 * Bytes the reference holds for a checkpoint's MoE layers (routed and shared experts; the routers are small): fp32,
 * or 2 bytes an element when packed.
 */
export function referenceBytes(spec: Checkpoint["spec"], packed = false): number {
  const perLayer =
    3 *
    spec.hiddenSize *
    (spec.experts * spec.intermediateSize + (spec.sharedExperts > 0 ? spec.sharedIntermediateSize : 0));
  return (packed ? 2 : 4) * perLayer * moeLayers(spec).length;
}

export class VerifierPool {
  /** Answers handed to the pool, and those checked so far. */
  offered = 0;
  checked = 0;
  private readonly idle: Worker[] = [];
  private readonly queue: VerifyJob[] = [];
  private readonly busy = new Map<Worker, VerifyJob>();
  private failure: Error | null = null;
  private drained: (() => void) | null = null;
  private closing = false;

  private constructor(
    private readonly threads: Worker[],
    private readonly mode: VerifyMode,
    private readonly onResult: (r: VerifyResult) => void,
  ) {
    for (const t of threads) {
      this.idle.push(t);
      t.on("message", (r: VerifyResult) => this.done(t, r));
      // A thread that dies must not leave the driver waiting for its answer forever.
      t.on("error", (e) => this.fail(t, e));
      t.on("exit", (code) => {
        if (this.busy.has(t) || (code !== 0 && !this.closing)) this.fail(t, new Error(`exited with code ${code}`));
      });
    }
  }

  static async start(
    threads: number,
    mode: VerifyMode,
    data: VerifierData,
    onResult: (r: VerifyResult) => void,
    /**
     * Tests that run the sources pass dist's verifier.js (threads do not load TypeScript) and execArgv without the
     * source-resolution condition; by default the compiled script beside this module and the process's own flags.
     */
    thread: { script?: URL; execArgv?: string[] } = {},
  ): Promise<VerifierPool> {
    const script = thread.script ?? new URL("./verifier.js", import.meta.url);
    const workers = await Promise.all(
      Array.from({ length: threads }, async () => {
        const w = new Worker(script, { workerData: data, ...(thread.execArgv ? { execArgv: thread.execArgv } : {}) });
        await new Promise<void>((res, rej) => {
          w.once("message", () => res());
          w.once("error", rej);
        });
        return w;
      }),
    );
    return new VerifierPool(workers, mode, onResult);
  }

  /** Whether offer() would take an answer now. */
  get accepting(): boolean {
    return !this.failure && (this.mode === "all" || this.idle.length > 0);
  }

  /** Hand an answer over. "sample" returns false (and drops it) when every thread is busy. */
  offer(job: VerifyJob): boolean {
    if (!this.accepting) return false;
    this.offered++;
    const t = this.idle.pop();
    if (t) this.send(t, job);
    else this.queue.push(job);
    return true;
  }

  /** Jobs handed over and not checked yet. */
  get pending(): number {
    return this.queue.length + this.busy.size;
  }

  /** Resolves when every job handed over has been checked; rejects if a thread failed. */
  drain(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.pending === 0) return Promise.resolve();
    return new Promise((res, rej) => {
      this.drained = () => (this.failure ? rej(this.failure) : res());
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.threads.map((t) => t.terminate()));
  }

  private send(t: Worker, job: VerifyJob): void {
    this.busy.set(t, job);
    t.postMessage(job);
  }

  private done(t: Worker, r: VerifyResult): void {
    this.busy.delete(t);
    this.checked++;
    this.onResult(r);
    const next = this.queue.shift();
    if (next) this.send(t, next);
    else this.idle.push(t);
    if (this.pending === 0) this.drained?.();
  }

  private fail(t: Worker, e: Error): void {
    const job = this.busy.get(t);
    this.failure ??= new Error(`verifier thread failed${job ? ` on answer #${job.id}` : ""}: ${e.message}`);
    this.busy.delete(t);
    this.queue.length = 0;
    this.drained?.();
  }
}
