// One driver's share of the local mode's load: sequences that each send every MoE layer in turn through the router's
// ForwardStream, feed each answer back as the next layer's input, and hand answers to the reference check. An engine
// batches its sequences' step: with engineBatch N, groups of N sequences send one Forward per layer with all their
// tokens, as an inference engine's step calls a MoE layer once for its whole batch. It runs
// on the main thread (--drivers 1) or in worker threads (drive-thread.ts): at the models' full sizes one JavaScript
// thread of load generation was what bound the runs (0.95 of a core on the H200 hosts), not the router or the GPUs.

import { credentials } from "@grpc/grpc-js";
import type { WeightDType } from "@switchyard/moe";
import {
  bytesToFloat32,
  DType,
  encodeTensor,
  type ForwardRequest,
  type ForwardResponse,
  fromRpcError,
  RouterClient,
  RouterDataClient,
  type Tensor,
} from "@switchyard/protocol";
import { CheckpointModel } from "../checkpoint-model.js";
import { CLIENT_CHANNEL_OPTIONS } from "../dispatch/worker-conn.js";
import { type Sequence, Traffic, type TrafficOptions } from "./loadgen.js";

export interface DriveOptions {
  /** Sequence s talks to routerAddresses[s % length] (one router, or replicas of it). */
  routerAddresses: string[];
  /**
   * The same routers' TCP data paths (data-server.ts), in the same order. Given: requests go there, on one
   * connection per router per driver, as an engine process would hold. Absent: each group of sequences opens its
   * own gRPC ForwardStream.
   */
  routerDataAddresses?: string[];
  /** The sequences this driver runs (ids into the seeded traffic: the same ids give the same tokens anywhere). */
  sequences: number[];
  layers: number[];
  hidden: number;
  dtype: DType;
  prefill: number;
  traffic: TrafficOptions;
  /** Load until this wall-clock time (Date.now() ms): every driver thread stops together, whenever it started. */
  endAtEpochMs: number;
  /**
   * The checkpoint whose gate the driver computes, playing the engine's part: each request then carries router_logits
   * (the router's own native gate product over the request's bytes, so the same logits the router would compute).
   * Absent: requests carry hidden states only and the router gates them.
   */
  engineGate?: string;
  /** Sequences per Forward (an engine's step over its batch; default 1: each sequence calls the router alone). */
  engineBatch?: number;
  /**
   * Each request's deadline (ForwardRequest.timeout_ms; default REQUEST_TIMEOUT_MS). The router answers
   * DEADLINE_EXCEEDED by then; one that does not answer at all (stopped, wedged) fails the request here a little
   * later, naming the router, so that no sequence waits forever and the load ends with its duration plus this.
   */
  requestTimeoutMs?: number;
  /** The routers' names for error messages, in routerAddresses' order (default "router at <address>"). */
  routerNames?: string[];
}

/** The router's own default deadline (router README): a request the local mode sends takes no longer. */
export const REQUEST_TIMEOUT_MS = 30_000;
/**
 * How long past its deadline a request waits for the router's own DEADLINE_EXCEEDED (which says where the time went)
 * before the driver gives up on the router.
 */
export const CLIENT_GRACE_MS = 2_000;

/** An answer to check against the reference: the bytes the router saw, widened, and its answer. */
export interface CheckJob {
  layer: number;
  hidden: Float32Array;
  /** the dtype the request sent hidden in */
  activations: WeightDType;
  output: Float32Array;
}

export interface DriveHooks {
  /** Whether an answer would be checked now (a reference thread is free, or every answer is checked). */
  wantsCheck(): boolean;
  check(job: CheckJob): void;
}

export class DriveStats {
  tokensDone = 0;
  forwards = 0;
  errors = 0;
  /** Answers that lost assignments to a capacity limit: they differ from the dropless reference by design. */
  unverifiable = 0;
  /** Answers that came while no reference thread was free (sampled checking). */
  unchecked = 0;
  readonly errorSamples: string[] = [];
  readonly latencies: number[] = [];
  /** The router's own time per forward (arrival to reply, ForwardStats.totalMs): the rest of a latency is transport. */
  readonly routerMs: number[] = [];
}

/** Runs the sequences until the duration is over; counts into `stats` as it goes (progress lines read them). */
export async function drive(o: DriveOptions, hooks: DriveHooks, stats: DriveStats): Promise<void> {
  const traffic = new Traffic(o.traffic);
  const grpcClients = o.routerDataAddresses
    ? []
    : o.routerAddresses.map((a) => new RouterClient(a, credentials.createInsecure(), CLIENT_CHANNEL_OPTIONS));
  const dataClients = (o.routerDataAddresses ?? []).map((a) => {
    const i = a.lastIndexOf(":");
    return new RouterDataClient(a.slice(0, i), Number(a.slice(i + 1)));
  });
  const endAt = performance.now() + (o.endAtEpochMs - Date.now());
  const d = o.hidden;
  const timeoutMs = o.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const routerName = (i: number) => o.routerNames?.[i] ?? `router at ${o.routerAddresses[i]}`;
  const engine = o.engineGate ? await CheckpointModel.open(o.engineGate) : null;
  // A group of sequences stepping together: one Forward per layer carries every sequence's tokens of the step.
  const groupLoop = async (sids: number[]) => {
    const sid = sids[0] as number;
    const r = sid % o.routerAddresses.length;
    const name = `${routerName(r)} (${dataClients.length ? `data path ${o.routerDataAddresses?.[r]}` : `gRPC ${o.routerAddresses[r]}`})`;
    const channel = withDeadline(
      dataClients.length
        ? dataChannel(dataClients[r] as RouterDataClient)
        : streamChannel(grpcClients[r] as RouterClient),
      timeoutMs + CLIENT_GRACE_MS,
      name,
    );
    let rid = BigInt(sid) << 32n;
    const seqs = sids.map((s) => traffic.sequence(s));
    let first = true;
    while (performance.now() < endAt) {
      const per = first ? o.prefill : 1;
      first = false;
      const n = per * seqs.length;
      let h: Float32Array;
      if (seqs.length === 1) h = (seqs[0] as Sequence).next(per).hidden;
      else {
        h = new Float32Array(n * d);
        for (let i = 0; i < seqs.length; i++) h.set((seqs[i] as Sequence).next(per).hidden, i * per * d);
      }
      for (const layer of o.layers) {
        const tensor = encodeTensor(h, [n, d], o.dtype);
        const gate: ForwardRequest["gate"] = engine
          ? { $case: "routerLogits", value: await engineLogits(engine, layer, tensor, n) }
          : undefined;
        const id = ++rid;
        const ts = performance.now();
        const res = await channel.send({ pool: "local", layer, hidden: tensor, gate, requestId: id, timeoutMs });
        stats.latencies.push(performance.now() - ts);
        if (res.stats) stats.routerMs.push(res.stats.totalMs);
        stats.forwards++;
        // An answer of another shape cannot be checked, nor fed to the next layer: it is an error, not an answer
        const problem = res.error ? fromRpcError(res.error).message : replyShapeProblem(res, n, d);
        if (problem !== null || !res.hidden) {
          stats.errors++;
          if (stats.errorSamples.length < 5)
            stats.errorSamples.push(problem?.startsWith(name) ? problem : `${name}: ${problem}`);
          channel.end();
          return;
        }
        const out = bytesToFloat32(res.hidden.data, res.hidden.dtype, true);
        if ((res.stats?.droppedAssignments ?? 0) > 0) stats.unverifiable++;
        else if (!hooks.wantsCheck()) stats.unchecked++;
        // what the router saw (the request's bytes, not h), widened only for answers that will be checked
        else
          hooks.check({
            layer,
            hidden: bytesToFloat32(tensor.data, o.dtype, true),
            activations: o.dtype === DType.BFLOAT16 ? "bfloat16" : o.dtype === DType.FLOAT16 ? "float16" : "float32",
            output: out,
          });
        // Next layer input: residual + norm, a stand-in for the rest of a transformer block.
        for (let i = 0; i < h.length; i++) h[i] += out[i];
        rmsNorm(h, d);
      }
      stats.tokensDone += n;
    }
    channel.end();
  };
  const groups: number[][] = [];
  const groupSize = Math.max(1, o.engineBatch ?? 1);
  for (let i = 0; i < o.sequences.length; i += groupSize) groups.push(o.sequences.slice(i, i + groupSize));
  try {
    await Promise.all(groups.map(groupLoop));
  } finally {
    for (const c of grpcClients) c.close();
    for (const c of dataClients) c.close();
  }
}

/** How a group of sequences sends its requests: each answer, or an error answer, never a rejection or a hang. */
export interface Channel {
  send(req: ForwardRequest): Promise<ForwardResponse>;
  end(): void;
}

/** An error answer: UNAVAILABLE (14) by default, DEADLINE_EXCEEDED (4) for a router that did not answer in time. */
const failed = (requestId: bigint, message: string, code = 14): ForwardResponse => ({
  requestId,
  hidden: undefined,
  stats: undefined,
  error: { code, message },
});

/**
 * What is wrong with a reply's hidden states for a request of [n, d]: null when it is an [n, d] tensor whose bytes
 * hold n * d values of its dtype. The reference check compares values one to one, so a shorter answer would pass it.
 */
export function replyShapeProblem(res: ForwardResponse, n: number, d: number): string | null {
  const h = res.hidden;
  if (!h) return `the router answered no hidden states for a request of [${n}, ${d}]`;
  if (h.shape.length !== 2 || h.shape[0] !== n || h.shape[1] !== d)
    return `the router answered hidden of shape [${h.shape.join(", ")}] for a request of [${n}, ${d}]`;
  if (h.dtype !== DType.FLOAT32 && h.dtype !== DType.BFLOAT16 && h.dtype !== DType.FLOAT16)
    return `the router answered hidden of dtype ${h.dtype}, not a float`;
  const width = h.dtype === DType.FLOAT32 ? 4 : 2;
  if (h.data.byteLength !== n * d * width)
    return `the router answered hidden [${n}, ${d}] with ${h.data.byteLength} bytes of data, expected ${n * d * width}`;
  return null;
}

/**
 * A channel whose every send answers within `ms`: a router that takes no reply (stopped, wedged, its event loop
 * stuck) fails the request, naming it, instead of holding its sequence, and with it the run, forever.
 */
export function withDeadline(ch: Channel, ms: number, router: string): Channel {
  return {
    send: (req) => {
      let t: NodeJS.Timeout | undefined;
      const late = new Promise<ForwardResponse>((r) => {
        t = setTimeout(() => r(failed(req.requestId, `${router}: no reply within ${ms} ms; is it stuck?`, 4)), ms);
      });
      return Promise.race([ch.send(req), late]).finally(() => clearTimeout(t));
    },
    end: () => ch.end(),
  };
}

/** A ForwardStream of the group's own. */
function streamChannel(client: RouterClient): Channel {
  const stream = client.forwardStream();
  const waiting = new Map<bigint, (r: ForwardResponse) => void>();
  stream.on("data", (r: ForwardResponse) => {
    const w = waiting.get(r.requestId);
    waiting.delete(r.requestId);
    w?.(r);
  });
  // A stream that failed or ended answers every wait, pending or later, with an error: none hangs.
  let closed: string | null = null;
  const failAll = (e: Error) => {
    closed ??= e.message;
    for (const [id, w] of waiting) w(failed(id, e.message));
    waiting.clear();
  };
  stream.on("error", failAll);
  stream.on("end", () => failAll(new Error("the router ended the stream")));
  stream.on("close", () => failAll(new Error("the stream to the router closed")));
  return {
    send: (req) =>
      new Promise<ForwardResponse>((r) => {
        if (closed !== null) return r(failed(req.requestId, closed));
        waiting.set(req.requestId, r);
        stream.write(req);
      }),
    end: () => stream.end(),
  };
}

/** The driver's connection to the router's data path, shared by its groups. */
function dataChannel(client: RouterDataClient): Channel {
  return {
    send: (req) => client.forward(req).catch((e: Error) => failed(req.requestId, e.message)),
    end: () => {},
  };
}

/**
 * The router logits [n, E] of a request's hidden states as the engine would send them: the router's gate product over
 * the request's own bytes (bf16 as they are, fp32 as they are), off this thread's event loop where it is large, in
 * the dtype the model's gate computes them in.
 */
async function engineLogits(m: CheckpointModel, layer: number, hidden: Tensor, n: number): Promise<Tensor> {
  let x: Float32Array | Uint16Array;
  if (hidden.dtype === DType.BFLOAT16) {
    x = new Uint16Array(hidden.data.byteLength / 2); // an aligned copy of the bf16 bits
    new Uint8Array(x.buffer).set(hidden.data);
  } else x = bytesToFloat32(hidden.data, hidden.dtype, true);
  const job = m.logitsAsync(layer, x, n);
  const logits =
    (job ? await job : null) ??
    (x instanceof Uint16Array ? m.logitsBf16(layer, x, n) : null) ??
    m.logits(layer, bytesToFloat32(hidden.data, hidden.dtype, true), n);
  // in the dtype the model's gate gives them for these hidden states (bf16 for Mixtral and Qwen from bf16), as sent
  return encodeTensor(logits, [n, m.experts], m.roundLogits(logits, hidden.dtype));
}

/** Sequence ids 0 .. concurrency-1 dealt round-robin to `drivers` drivers. */
export function dealSequences(concurrency: number, drivers: number): number[][] {
  const out: number[][] = Array.from({ length: Math.min(drivers, concurrency) }, () => []);
  for (let s = 0; s < concurrency; s++) out[s % out.length].push(s);
  return out;
}

export function rmsNorm(x: Float32Array, d: number): void {
  for (let t = 0; t < x.length / d; t++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += x[t * d + j] ** 2;
    const k = 1 / Math.sqrt(s / d + 1e-6);
    for (let j = 0; j < d; j++) x[t * d + j] *= k;
  }
}

/** Adds the drivers' stats into `into`. */
export function addStats(into: DriveStats, ...from: DriveStats[]): DriveStats {
  for (const s of from) {
    into.tokensDone += s.tokensDone;
    into.forwards += s.forwards;
    into.errors += s.errors;
    into.unverifiable += s.unverifiable;
    into.unchecked += s.unchecked;
    for (const e of s.errorSamples) if (into.errorSamples.length < 5) into.errorSamples.push(e);
    for (const v of s.latencies) into.latencies.push(v);
    for (const v of s.routerMs) into.routerMs.push(v);
  }
  return into;
}
