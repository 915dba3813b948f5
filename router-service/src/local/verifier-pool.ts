// The local mode's reference threads. The layers' weights are widened to fp32 once, into SharedArrayBuffers that
// every thread reads: a full-size Mixtral layer is 5.6 GB in fp32, too much to copy into each thread.
//
// "all" checks every answer: jobs wait in a queue here for a free thread. "sample" takes an answer only when a thread
// is idle and lets the rest go unchecked. At full size the JavaScript reference takes ~0.6 s per Mixtral token, far
// slower than a GPU worker answers, so checking everything would either hold the load back or queue gigabytes of
// answers; the final table says how many answers were checked out of how many.

import { Worker } from "node:worker_threads";
import {
  type Checkpoint,
  type ExpertFFNWeights,
  expertToFloat32,
  type MoeLayerWeights,
  moeLayers,
  toFloat32,
} from "@switchyard/moe";
import type { VerifierData, VerifyJob, VerifyResult } from "./verifier.js";

export type VerifyMode = "all" | "sample";

function shared(a: Float32Array): Float32Array {
  const s = new Float32Array(new SharedArrayBuffer(a.byteLength));
  s.set(a);
  return s;
}

function sharedExpert(w: ExpertFFNWeights): ExpertFFNWeights {
  return { ...w, gate: shared(w.gate), up: shared(w.up), down: shared(w.down) };
}

/** Every MoE layer in fp32 on SharedArrayBuffers, read expert by expert so that only one expert is held twice. */
export async function readSharedLayers(ckpt: Checkpoint): Promise<Record<number, MoeLayerWeights>> {
  const out: Record<number, MoeLayerWeights> = {};
  for (const l of moeLayers(ckpt.spec)) {
    const experts: ExpertFFNWeights[] = [];
    for (let e = 0; e < ckpt.spec.experts; e++)
      experts.push(sharedExpert(expertToFloat32(await ckpt.readExpert(l, e))));
    const w: MoeLayerWeights = { gate: shared(toFloat32(await ckpt.readGate(l))), experts };
    const sh = await ckpt.readSharedExpert(l);
    if (sh) w.shared = sharedExpert(expertToFloat32(sh));
    const sg = await ckpt.readSharedExpertGate(l);
    if (sg) w.sharedGate = shared(toFloat32(sg));
    const bias = await ckpt.readCorrectionBias(l);
    if (bias) w.correctionBias = shared(toFloat32(bias));
    out[l] = w;
  }
  return out;
}

/** fp32 bytes the reference holds for a checkpoint's MoE layers (routed and shared experts; the routers are small). */
export function referenceBytes(spec: Checkpoint["spec"]): number {
  const perLayer =
    3 * spec.hiddenSize * (spec.experts * spec.intermediateSize + spec.sharedExperts * spec.sharedIntermediateSize);
  return 4 * perLayer * moeLayers(spec).length;
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
