// A minimal ExpertWorker server for router tests and the router benchmark: experts are plain functions (or the
// identity, which echoes the rows' bytes untouched: the "no-op expert" the overhead benchmark needs). It can be
// told to fail or stall, to exercise retries and deadlines. Like the real worker it offers the TCP data path beside
// the gRPC stream (Status.data_port) unless told not to. Not the real worker (expert-worker/).

import { createServer, type Server as NetServer, type Socket } from "node:net";
import {
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type sendUnaryData,
} from "@grpc/grpc-js";
import {
  bytesToFloat32,
  DType,
  type ExpertBatch,
  ExpertResult,
  ExpertWorkerService,
  failedPrecondition,
  serveFrames,
  toRpcError,
  unavailable,
  valuesToBytes,
  type WorkerStatus,
  writeFrame,
} from "@switchyard/protocol";
import { raiseServerWindow, SERVER_OPTIONS } from "../server.js";
import { decodeExpertBatch } from "../wire/decode.js";
import { encodeExpertResult, encodeExpertResultInPlace } from "../wire/encode.js";

// Identity results go out pre-encoded (one copy of the rows), so the no-op expert costs what a no-op should.
// The identity echo writes its reply header in place, over the already-parsed head of the received message (zero
// copies of the rows, like the baseline's echo server), so `RAW` keeps the message each batch came in.
const RAW = Symbol("raw message");
type RawBatch = ExpertBatch & { [RAW]?: Buffer };
const FAST_SERVICE = {
  ...ExpertWorkerService,
  runExpertsStream: {
    ...ExpertWorkerService.runExpertsStream,
    requestDeserialize: (buf: Buffer): ExpertBatch => {
      const b: RawBatch = decodeExpertBatch(buf);
      b[RAW] = buf;
      return b;
    },
    responseSerialize: (v: ExpertResult | Buffer): Buffer =>
      Buffer.isBuffer(v) ? v : Buffer.from(ExpertResult.encode(v).finish()),
  },
};

const SEEN_CAP = 1000;

export type ExpertFn = (layer: number, expert: number, row: Float32Array) => Float32Array;

export interface FakeWorkerOptions {
  id: string;
  /** null = identity (bytes echoed as they came). */
  expert: ExpertFn | null;
  port?: number;
  /** Offer the TCP data path (default true). */
  dataPath?: boolean;
  /** What Status lists as served (default none: a fake worker computes whatever it is sent). */
  served?: { layer: number; expert: number }[];
  /** Status offers deduplicated, worker-combined batches (ExpertBatch.token_rows / combine), as real workers do. */
  combines?: boolean;
  /** Status sets `cancels` (default false, as a worker from before ExpertBatch.cancel): the ids it is sent land in
   * `cancelled`, and a cancel-only message gets no reply, as on a real worker. */
  cancels?: boolean;
}

export class FakeWorker {
  /** "ok" | "fail" (every batch answers UNAVAILABLE) | "stall" (never answers) | "hang" (batches never answer, Status
   * does: alive but stuck, so only a deadline ends a batch) | "short" (answers one row short: a malformed reply; Status
   * still answers) */
  mode: "ok" | "fail" | "stall" | "hang" | "short" = "ok";
  /** Experts this worker's plan no longer holds: a batch with rows for one answers FAILED_PRECONDITION, as a real one. */
  notServed = new Set<number>();
  refused = 0;
  batches = 0;
  rows = 0;
  /** The last SEEN_CAP..2*SEEN_CAP batches (bounded: a benchmark sends millions). */
  /** rows: token rows sent; assignments: rows the slices address (more with token_rows) */
  readonly seen: {
    layer: number;
    experts: number[];
    rows: number;
    assignments: number;
    combine: boolean;
    timeoutMs: number;
  }[] = [];
  port = 0;
  /** 0 = no data path. */
  dataPort = 0;
  /** Batches that came over the data path. */
  dataBatches = 0;
  /** Batch ids named by ExpertBatch.cancel, in arrival order, and the messages that carried them. */
  readonly cancelled: bigint[] = [];
  cancelMessages = 0;
  private server = new Server(SERVER_OPTIONS);
  private dataServer: NetServer | null = null;
  private readonly dataSockets = new Set<Socket>();

  constructor(readonly o: FakeWorkerOptions) {}

  run(b: ExpertBatch): ExpertResult {
    if (this.mode === "fail") throw unavailable(`fake worker ${this.o.id} failing on purpose`);
    const gone = b.slices.findIndex((s) => s.count > 0 && this.notServed.has(s.expert));
    if (gone >= 0) {
      this.refused++;
      throw failedPrecondition(
        `expert ${b.slices[gone].expert} of layer ${b.layer} is not served by this worker`,
        `slices[${gone}].expert`,
      );
    }
    const t = b.tokens!;
    const [distinct, d] = t.shape;
    const tr = b.tokenRows ?? [];
    const n = tr.length > 0 ? tr.length : distinct;
    this.batches++;
    this.rows += n;
    this.record(b);
    if (this.o.expert === null && tr.length === 0)
      return { batchId: b.batchId, output: t, stats: undefined, error: undefined };
    const x = bytesToFloat32(t.data, t.dtype, true);
    const input = (r: number) => {
      const u = tr.length > 0 ? tr[r] : r;
      return x.subarray(u * d, (u + 1) * d);
    };
    const out = new Float32Array(n * d);
    for (const s of b.slices) {
      for (let r = s.offset; r < s.offset + s.count; r++) {
        out.set(this.o.expert ? this.o.expert(b.layer, s.expert, input(r)) : input(r), r * d);
      }
    }
    if (b.combine) {
      // Like a real worker: each row in the request dtype, scaled by its weight, then summed per token in fp32.
      const w = b.rowWeights ? bytesToFloat32(b.rowWeights.data, DType.FLOAT32, true) : null;
      const rowsOut = bytesToFloat32(valuesToBytes(out, t.dtype), t.dtype, true);
      const acc = new Float32Array(distinct * d);
      for (let r = 0; r < n; r++) {
        const a = tr[r] * d;
        const wr = w ? w[r] : 1;
        for (let j = 0; j < d; j++) acc[a + j] += wr * rowsOut[r * d + j];
      }
      return {
        batchId: b.batchId,
        output: { dtype: DType.FLOAT32, shape: [distinct, d], data: valuesToBytes(acc, DType.FLOAT32) },
        stats: undefined,
        error: undefined,
      };
    }
    return {
      batchId: b.batchId,
      output: { dtype: t.dtype, shape: [n, d], data: valuesToBytes(out, t.dtype) },
      stats: undefined,
      error: undefined,
    };
  }

  private record(b: ExpertBatch): void {
    if (this.seen.length >= 2 * SEEN_CAP) this.seen.splice(0, SEEN_CAP); // amortised O(1)
    this.seen.push({
      layer: b.layer,
      experts: b.slices.map((s) => s.expert),
      rows: b.tokens!.shape[0],
      assignments: (b.tokenRows ?? []).length || b.tokens!.shape[0],
      combine: b.combine === true,
      timeoutMs: b.timeoutMs,
    });
  }

  /**
   * Answers one stream batch through `write` (either path). `raw` is the message the batch was decoded from: the
   * identity echo writes its reply header in place over it and sends the rows untouched.
   */
  private answer(b: ExpertBatch, raw: Buffer | undefined, write: (reply: Buffer) => void): void {
    if (b.cancel.length > 0) {
      this.cancelMessages++;
      this.cancelled.push(...b.cancel);
      if (b.tokens === undefined && b.slices.length === 0) return;
    }
    if (this.mode === "stall" || this.mode === "hang") return;
    try {
      if (this.o.expert === null && this.mode === "ok" && (b.tokenRows ?? []).length === 0) {
        this.batches++;
        this.rows += b.tokens!.shape[0];
        this.record(b);
        const t = b.tokens!;
        const data = t.data as Buffer;
        const room = raw && raw.buffer === data.buffer ? data.byteOffset - raw.byteOffset : 0;
        write(
          encodeExpertResultInPlace(b.batchId, t.dtype, t.shape, data, room) ??
            encodeExpertResult(b.batchId, t.dtype, t.shape, t.data),
        );
        return;
      }
      const r = this.run(b);
      if (this.mode === "short" && r.output) {
        const o = r.output;
        const rowBytes = o.data.byteLength / o.shape[0];
        r.output = {
          ...o,
          shape: [o.shape[0] - 1, o.shape[1]],
          data: o.data.subarray(0, o.data.byteLength - rowBytes),
        };
      }
      write(Buffer.from(ExpertResult.encode(r).finish()));
    } catch (e) {
      write(
        Buffer.from(
          ExpertResult.encode({
            batchId: b.batchId,
            output: undefined,
            stats: undefined,
            error: toRpcError(e),
          }).finish(),
        ),
      );
    }
  }

  private async startDataPath(): Promise<void> {
    const server = createServer((s) => {
      this.dataSockets.add(s);
      const reply = (buf: Buffer) => writeFrame(s, buf);
      serveFrames(s, SERVER_OPTIONS["grpc.max_receive_message_length"] as number, (f) => {
        this.dataBatches++;
        this.answer(decodeExpertBatch(f), f, reply);
      });
      s.on("close", () => this.dataSockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    this.dataServer = server;
    this.dataPort = (server.address() as { port: number }).port;
  }

  async start(): Promise<number> {
    if (this.o.dataPath !== false) await this.startDataPath();
    raiseServerWindow(this.server);
    this.server.addService(FAST_SERVICE, {
      runExperts: (call: ServerUnaryCall<ExpertBatch, ExpertResult>, cb: sendUnaryData<ExpertResult>) => {
        if (this.mode === "stall" || this.mode === "hang") return;
        try {
          cb(null, this.run(call.request));
        } catch (e) {
          cb({ code: 14, details: (e as Error).message });
        }
      },
      runExpertsStream: (call: ServerDuplexStream<ExpertBatch, ExpertResult>) => {
        const write = (reply: Buffer) => (call as unknown as { write(x: Buffer): void }).write(reply);
        call.on("data", (b: ExpertBatch) => this.answer(b, (b as RawBatch)[RAW], write));
        call.on("end", () => call.end());
        call.on("error", () => {});
      },
      prefetch: (_c: unknown, cb: sendUnaryData<unknown>) => cb(null, { loaded: [], alreadyResident: [], evicted: [] }),
      evict: (_c: unknown, cb: sendUnaryData<unknown>) => cb(null, { evicted: [] }),
      status: (_c: unknown, cb: sendUnaryData<WorkerStatus>) =>
        this.mode === "ok" || this.mode === "short" || this.mode === "hang"
          ? cb(null, {
              workerId: this.o.id,
              backend: "fake",
              pool: "",
              resident: [],
              capacity: 0,
              queueDepth: 0,
              queueCapacity: 0,
              cacheHits: 0n,
              cacheMisses: 0n,
              cacheEvictions: 0n,
              served: this.o.served ?? [],
              hiddenSize: 0,
              layers: 0,
              experts: 0,
              dataPort: this.dataPort,
              combines: this.o.combines !== false,
              cancels: this.o.cancels === true,
            })
          : cb({ code: 14, details: "down" }),
    });
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`127.0.0.1:${this.o.port ?? 0}`, ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    return this.port;
  }

  /** Cuts every data-path connection (the gRPC server stays up): a data path broken under the router. */
  dropDataConnections(): void {
    for (const s of this.dataSockets) s.destroy();
  }

  /** Stops listening on the data port but keeps advertising it: connects to it are refused. */
  closeDataPort(): Promise<void> {
    this.dropDataConnections();
    return new Promise((resolve) => (this.dataServer ? this.dataServer.close(() => resolve()) : resolve()));
  }

  stop(): void {
    this.server.forceShutdown();
    this.dataServer?.close();
    for (const s of this.dataSockets) s.destroy();
  }
}
