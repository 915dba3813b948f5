// The least work a router must do per request, as a reference for bench:router's overhead figure: decode the
// ForwardRequest, copy its rows into one ExpertBatch for one worker (the router's own WorkerConn, pooled buffers),
// combine the worker's rows with the request's weights (the router's native combine), encode the ForwardResponse.
// No gating, capacity, placement, batching, retries, deadlines per request, metrics or stats: what is left is the
// protocol work any gRPC router of these messages pays on top of a forwarder that moves opaque bytes. It serves only
// the benchmark's request shape (top-1 assignment to one expert); anything else gets INVALID_ARGUMENT.

import { Server, ServerCredentials, type ServerDuplexStream } from "@grpc/grpc-js";
import {
  invalidArgument as bad,
  DType,
  decodeTensor,
  type ForwardRequest,
  type ForwardResponse,
  toRpcError,
} from "@switchyard/protocol";
import {
  BACKING,
  batchPool,
  combineInto,
  ENCODED,
  encodeExpertBatch,
  encodeForwardResponse,
  ROUTER_SERVICE,
  raiseServerWindow,
  replyPool,
  resultRows,
  SERVER_OPTIONS,
  WorkerConn,
} from "@switchyard/router-service";

export async function serveBareRouter(workerAddress: string, pool: string): Promise<number> {
  // The router's own worker transport ("auto": the worker's TCP data path, learnt from one Status call).
  const conn = new WorkerConn({ id: "w0", address: workerAddress, statusIntervalMs: 0 });
  await conn.refreshStatus();
  const server = new Server(SERVER_OPTIONS);
  raiseServerWindow(server);
  const forward = (req: ForwardRequest): Promise<ForwardResponse> => {
    const h = req.hidden;
    if (h?.shape.length !== 2 || h.dtype !== DType.BFLOAT16) throw bad("hidden", "expected [T, d] bf16");
    const [T, d] = h.shape;
    const rowBytes = d * 2;
    if (h.data.byteLength !== T * rowBytes) throw bad("hidden.data", `expected ${T * rowBytes} bytes`);
    if (req.gate?.$case !== "assignment") throw bad("gate", "expected an assignment");
    const ids = decodeTensor(req.gate.value.expertIds, "expert_ids", { dtype: DType.INT32, shape: [T, 1] })
      .values as Int32Array;
    const weights = decodeTensor(req.gate.value.weights, "weights", { dtype: DType.FLOAT32, shape: [T, 1] })
      .values as Float32Array;
    const expert = ids[0];
    for (let t = 1; t < T; t++) if (ids[t] !== expert) throw bad("gate.expert_ids", "one expert only");
    const locations = new Int32Array(T * 2);
    for (let t = 0; t < T; t++) locations[2 * t + 1] = t;
    return conn
      .run(
        (batchId) =>
          encodeExpertBatch(
            {
              pool,
              layer: req.layer,
              dtype: h.dtype,
              rows: T,
              hidden: d,
              rowBytes,
              slices: [{ expert, offset: 0, count: T }],
              batchId,
              timeoutMs: 30_000,
            },
            (dst, at) => void dst.set(h.data, at),
            (n) => batchPool.take(n),
          ),
        req.layer,
        [expert],
        30_000,
        T,
      )
      .then((r) => {
        const out = r.output;
        if (!out || out.data.byteLength !== T * rowBytes) throw new Error("worker: malformed result");
        const enc = encodeForwardResponse(req.requestId, h.dtype, [T, d], T * rowBytes, undefined, undefined, 2, (n) =>
          replyPool.take(n),
        );
        const dst = new Uint16Array(enc.data.buffer, enc.data.byteOffset, enc.data.byteLength / 2);
        const results = [resultRows({ data: out.data, dtype: h.dtype })];
        combineInto({ tokens: T, d, dtype: h.dtype, slots: 1, weights, locations, results }, dst);
        const res: ForwardResponse = {
          requestId: req.requestId,
          hidden: undefined,
          stats: undefined,
          error: undefined,
        };
        (res as unknown as Record<symbol, Buffer>)[ENCODED] = enc.message;
        (res as unknown as Record<symbol, Buffer>)[BACKING] = enc.backing;
        return res;
      });
  };
  server.addService(ROUTER_SERVICE, {
    forward: () => {},
    forwardStream: (call: ServerDuplexStream<ForwardRequest, ForwardResponse>) => {
      call.on("data", (req: ForwardRequest) => {
        let p: Promise<ForwardResponse>;
        try {
          p = forward(req);
        } catch (e) {
          p = Promise.reject(e);
        }
        p.then(
          (res) => {
            const back = (res as unknown as Record<symbol, Buffer>)[BACKING];
            call.write(res, () => replyPool.give(back));
          },
          (e) => call.write({ requestId: req.requestId, hidden: undefined, stats: undefined, error: toRpcError(e) }),
        );
      });
      call.on("end", () => call.end());
      call.on("error", () => {});
    },
  });
  return new Promise((res, rej) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
}
