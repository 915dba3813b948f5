// npm run bench:router — the router against the transport it rides on, measured side by side in one run.
// Writes bench/results/router.json.
//
//   overhead_ratio[T]  router throughput (no-op experts: a worker that echoes its rows) ÷ a two-hop grpc-js
//                      forwarder moving the same bytes with the same gRPC settings the router uses (long-lived
//                      bidi streams on both hops, 16 MiB client flow-control window, raised server window, same
//                      message limits). d=4096 bf16, T = 1, 16, 256 tokens per request, explicit top-1 assignment so
//                      every hop carries T×8 KiB each way. Router batching off: pure per-request cost, no merging.
//                      The router reaches its worker over the worker's TCP data path (its default; the client hop
//                      is gRPC), so two more figures in the same rounds say what that path is worth:
//   grpc_hop_ratio[T]  the same router told to use the gRPC stream to the worker (--worker-transport grpc) ÷ the
//                      same forwarder: the router on grpc-js for both hops.
//   same_transport_ratio[T]  the router ÷ a forwarder on the router's own transports (gRPC client hop, data-path
//                      frames to a framed echo): the router's own cost against the transports it rides on.
//   bare_ratio[T]      the same for a bare router (bench/bare-router.ts: decode, one ExpertBatch, combine, encode; no
//                      gating, placement, batching or metrics) in the same rounds: how much of the gap to the forwarder
//                      is protocol work any router of these messages does, and how much is the router's own logic.
//   engine_data_speedup[T]  the same router process with its client on the engines' TCP data path (--data-port:
//                      ForwardStream's messages length-prefixed, no HTTP/2) ÷ with its client on the gRPC stream, in
//                      the same rounds: what that path is worth to an engine against a router doing the same work.
//   tcp_ratio[T]       router round trip ÷ round trip of a raw TCP two-hop echo (node:net pipe forwarder) of the
//                      same bytes (≥ 1: how many times slower than bare TCP).
//   batching_speedup   64 concurrent 1-token decode streams through the router to 2 real CPU expert workers
//                      (native backend), tokens/s with expert-aware batching ÷ with batching off.
//   batching_p99_ratio p99 latency with batching ÷ without.
//   decision_fraction  DeepSeek-V3 routing (256 experts, sigmoid + group-limited top-8, 64 tokens, router logits
//                      given): gating + capacity + replica planning time in the router ÷ the Forward round trip
//                      (d=7168 bf16, 4 no-op workers).
//
// Processes: this one (client), the router, the workers / forwarder / echo servers each in their own process.
// Env: BENCH_SECONDS (per measurement, default 3), BENCH_OUT (output path); for iterating: BENCH_ONLY, BENCH_TS,
// BENCH_ROUNDS, BENCH_WARMUP_S, BENCH_PROF=router (CPU profile into /tmp/prof), BENCH_PERF=router, BENCH_SMALL=0, BENCH_WORKER_THREADS.

import { type ChildProcess, fork } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { connect, createServer as createNetServer, type Socket } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  type ClientDuplexStream,
  credentials,
  makeGenericClientConstructor,
  Server,
  ServerCredentials,
  type ServerDuplexStream,
} from "@grpc/grpc-js";
import { startWorker } from "@switchyard/expert-worker";
import {
  DATA_PATH_NODE_FLAGS,
  type GatingPolicy,
  generateCheckpoint,
  planPlacement,
  resolveRoutingPolicy,
  sigmoidGroupTopK,
} from "@switchyard/moe";
import {
  DATA_PREFACE,
  DType,
  encodeTensor,
  ForwardRequest,
  type ForwardResponse,
  FrameReader,
  fromRpcError,
  ROUTER_DATA_PREFACE,
  RouterService,
  serveFrames,
  writeFrame,
} from "@switchyard/protocol";
import {
  CheckpointModel,
  CLIENT_CHANNEL_OPTIONS,
  decodeForwardResponse,
  FakeWorker,
  type PoolModel,
  Router,
  raiseServerWindow,
  SERVER_OPTIONS,
  serveRouter,
} from "@switchyard/router-service";
import { applyCapacity } from "../router-service/src/core/capacity.js";
import { layoutRound } from "../router-service/src/core/plan-flush.js";
import { collectAssignments as collectRouted } from "../router-service/src/core/routing.js";
import { mulberry32 } from "../router-service/src/local/loadgen.js";
import { serveBareRouter } from "./bare-router.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const D = 4096;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
/**
 * Compute threads per CPU worker process (the native pool's SWITCHYARD_CPU_THREADS), the same for batching on and
 * off. Default "auto" (the pool's default: all cores). Runs with 1 thread per worker were not distinguishable from
 * the default within this machine's noise (speedup 4.2 vs 4.7 in back-to-back runs).
 */
const WORKER_THREADS = process.env.BENCH_WORKER_THREADS ?? "auto";
const WORKER_ENV: Record<string, string> = WORKER_THREADS === "auto" ? {} : { SWITCHYARD_CPU_THREADS: WORKER_THREADS };
/** Batching window of the "on" router (the policy's maxWaitMs). */
const MAX_WAIT_MS = Number(process.env.BENCH_MAX_WAIT_MS ?? 2);

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// ---------------------------------------------------------------------------------------------------------------
// Models the router needs for the synthetic pools (the gate is all a router reads from a model).

function noopModel(d: number, experts: number): PoolModel {
  return {
    family: "bench",
    layers: 1,
    experts,
    hiddenSize: d,
    hasShared: false,
    isMoeLayer: () => true,
    logits: (_l, _h, T) => new Float32Array(T * experts),
    route: () => {
      throw new Error("bench pools take explicit assignments");
    },
    shared: () => null,
  };
}

/** DeepSeek-V3's gate over given logits: sigmoid + correction bias, 8 groups, 4 kept, top-8, scale 2.5. */
function deepseekModel(d: number): PoolModel & { bias: Float32Array } {
  const E = 256;
  const bias = Float32Array.from({ length: E }, (_, i) => ((i * 37) % 101) / 1000 - 0.05);
  return {
    family: "deepseek-v3",
    layers: 1,
    experts: E,
    hiddenSize: d,
    hasShared: false,
    bias,
    isMoeLayer: () => true,
    logits: () => {
      throw new Error("decision bench passes router logits");
    },
    route: (_l, logits, T, g: GatingPolicy) => {
      const r = sigmoidGroupTopK(logits, E, {
        topK: g.topK ?? 8,
        normTopKProb: true,
        nGroup: 8,
        topkGroup: 4,
        routedScalingFactor: 2.5,
        correctionBias: bias,
      });
      return { tokens: T, slots: r.k, experts: r.ids, weights: r.weights };
    },
    shared: () => null,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Child roles.

const ident = (b: Buffer) => b;
const RAW = {
  chat: {
    path: "/bench.Echo/Chat",
    requestStream: true,
    responseStream: true,
    requestSerialize: ident,
    requestDeserialize: ident,
    responseSerialize: ident,
    responseDeserialize: ident,
  },
} as const;
const RawClient = makeGenericClientConstructor(RAW, "Echo");

async function bindGrpc(server: Server): Promise<number> {
  return new Promise((res, rej) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
}

async function roleEcho(): Promise<number> {
  const s = new Server(SERVER_OPTIONS);
  raiseServerWindow(s);
  s.addService(RAW, {
    chat: (call: ServerDuplexStream<Buffer, Buffer>) => {
      call.on("data", (b: Buffer) => call.write(b));
      call.on("end", () => call.end());
    },
  });
  return bindGrpc(s);
}

/** Two-hop baseline: one long-lived upstream stream per downstream stream, replies in order (FIFO). */
async function roleForwarder(upstream: string): Promise<number> {
  const client = new RawClient(upstream, credentials.createInsecure(), CLIENT_CHANNEL_OPTIONS);
  const s = new Server(SERVER_OPTIONS);
  raiseServerWindow(s);
  s.addService(RAW, {
    chat: (call: ServerDuplexStream<Buffer, Buffer>) => {
      const up = (client as unknown as { chat(): ClientDuplexStream<Buffer, Buffer> }).chat();
      up.on("data", (b: Buffer) => call.write(b));
      up.on("end", () => call.end());
      call.on("data", (b: Buffer) => up.write(b));
      call.on("end", () => up.end());
    },
  });
  return bindGrpc(s);
}

/** The data path's framing (packages/protocol/src/data-path.ts) as an echo: each frame back as it came. */
async function roleDataEcho(): Promise<number> {
  const srv = createNetServer((sock) => serveFrames(sock, 512 << 20, (f) => writeFrame(sock, f)));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  return (srv.address() as { port: number }).port;
}

/** A forwarder on the router's own transports: gRPC bidi stream in, one data-path connection per stream out. */
async function roleDataForwarder(port: number): Promise<number> {
  const s = new Server(SERVER_OPTIONS);
  raiseServerWindow(s);
  s.addService(RAW, {
    chat: (call: ServerDuplexStream<Buffer, Buffer>) => {
      const up = connect({ port, host: "127.0.0.1", noDelay: true });
      up.write(DATA_PREFACE);
      const r = new FrameReader(512 << 20, false, (f) => call.write(f));
      up.on("data", (c: Buffer) => r.push(c));
      up.on("error", () => call.end());
      call.on("data", (b: Buffer) => writeFrame(up, b));
      call.on("end", () => up.end());
    },
  });
  return bindGrpc(s);
}

async function roleTcpEcho(): Promise<number> {
  const srv = createNetServer((sock) => {
    sock.setNoDelay(true);
    sock.pipe(sock);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  return (srv.address() as { port: number }).port;
}

async function roleTcpForwarder(port: number): Promise<number> {
  const srv = createNetServer((down) => {
    down.setNoDelay(true);
    const up = connect(port, "127.0.0.1");
    up.setNoDelay(true);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  return (srv.address() as { port: number }).port;
}

async function roleFakeWorkers(n: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < n; i++) {
    const w = new FakeWorker({ id: `w${i}`, expert: null });
    ports.push(await w.start());
  }
  return ports;
}

interface RouterSpec {
  model: "noop" | "deepseek" | { checkpoint: string };
  d: number;
  experts: number;
  workers: string[];
  endpoints: Record<string, string>;
  replicas: number[][][];
  policy: unknown;
  /** The router's worker transport (default auto: the worker's data path). */
  transport?: "auto" | "grpc";
  /** Also serve the engines' TCP data path: the role then answers { port, dataPort }. */
  engineDataPath?: boolean;
}

async function roleRouter(spec: RouterSpec): Promise<number | { port: number; dataPort: number | null }> {
  const model =
    spec.model === "noop"
      ? noopModel(spec.d, spec.experts)
      : spec.model === "deepseek"
        ? deepseekModel(spec.d)
        : await CheckpointModel.open(spec.model.checkpoint);
  const router = new Router({ statusIntervalMs: 1000, workerTransport: spec.transport });
  router.setPool({
    name: "bench",
    model,
    plan: { version: 1, pool: "bench", workers: spec.workers, replicas: spec.replicas },
    endpoints: spec.endpoints,
    policy: resolveRoutingPolicy(spec.policy),
  });
  // As a served router is after its first Status polls: each connection knows its worker's data port.
  await router.refreshWorkers("bench");
  const s = await serveRouter(router, {
    port: 0,
    host: "127.0.0.1",
    metricsPort: null,
    dataPort: spec.engineDataPath ? 0 : null,
  });
  return spec.engineDataPath ? { port: s.port, dataPort: s.dataPort } : s.port;
}

async function roleWorker(a: { checkpoint: string; id: string; planFile: string }): Promise<number> {
  const w = await startWorker({
    checkpoint: a.checkpoint,
    pool: "bench",
    workerId: a.id,
    port: 0,
    metricsPort: 0,
    host: "127.0.0.1",
    plan: a.planFile,
    queueCapacity: 4096,
    log: () => {},
  });
  await w.warmed; // measured warm, as a deployed worker is once ready
  return w.port;
}

// ---------------------------------------------------------------------------------------------------------------
// Client side.

const children: ChildProcess[] = [];
const procByPort = new Map<ChildProcess, string>();

/** CPU microseconds a child has used so far (user + system). */
function cpuOf(c: ChildProcess): Promise<number> {
  return new Promise((res) => {
    const on = (m: { cpuUs?: number; activeUs?: number }) => {
      if (typeof m?.cpuUs === "number") {
        c.off("message", on);
        if (process.env.BENCH_ELU)
          console.log(`cpu ${procByPort.get(c)} total ${m.cpuUs} main-thread-active ${m.activeUs}`);
        res(m.cpuUs);
      }
    };
    c.on("message", on);
    c.send("cpu");
  });
}
/** Child roles that carry activations (production: router, workers) and their baseline twins. */
const DATA_PATH_ROLES = new Set([
  "router",
  "bareRouter",
  "forwarder",
  "fakeWorkers",
  "worker",
  "echo",
  "dataEcho",
  "dataForwarder",
]);

function start<T = number>(role: string, arg?: unknown): Promise<T> {
  return new Promise((res, rej) => {
    // BENCH_PROF=role: CPU profile of that child into /tmp (for finding the router's hot spots)
    const prof = process.env.BENCH_PROF === role ? ["--cpu-prof", "--cpu-prof-dir=/tmp/prof"] : [];
    // BENCH_PERF=role[,role]: JIT symbol map for `perf record -p PID` (native, kernel and JavaScript frames in one profile)
    if (process.env.BENCH_PERF?.split(",").includes(role)) prof.push("--perf-basic-prof-only-functions");
    if (process.env.BENCH_TRACE_GC === role) prof.push("--trace-gc");
    // Router and workers run with their production V8 flags (@switchyard/moe node-flags.ts); the baseline's
    // forwarder and echo server get the same flags.
    if (DATA_PATH_ROLES.has(role)) prof.push(...DATA_PATH_NODE_FLAGS);
    const c = fork(
      fileURLToPath(import.meta.url),
      ["child", role, ...(arg === undefined ? [] : [JSON.stringify(arg)])],
      {
        stdio: ["ignore", "inherit", "inherit", "ipc"],
        // Children import the workspace packages compiled (dist/, what `node router-service/dist/main.js` runs), not
        // the TypeScript sources through tsx: tsx's transform wraps every closure in a naming helper that showed as
        // ~1.5% of the router's CPU. `npm run bench:router` builds first.
        execArgv: [...process.execArgv.filter((a) => a !== "--conditions=switchyard-source"), ...prof],
        env: role === "worker" ? { ...process.env, ...WORKER_ENV } : process.env,
      },
    );
    children.push(c);
    c.once("message", (m: { port: T }) => res(m.port));
    procByPort.set(c, role);
    c.once("exit", (code) => rej(new Error(`${role} exited with ${code}`)));
  });
}

function stopAll() {
  for (const c of children.splice(0)) c.kill(process.env.BENCH_PROF ? "SIGINT" : "SIGKILL");
}

/** A pipelined request/reply channel: send(x) resolves with the reply, `window` requests in flight at most. */
interface Channel {
  call(): Promise<void>;
  close(): void;
}

function rawChannel(address: string, payload: Buffer): Channel {
  const client = new RawClient(address, credentials.createInsecure(), CLIENT_CHANNEL_OPTIONS);
  const stream = (client as unknown as { chat(): ClientDuplexStream<Buffer, Buffer> }).chat();
  const waiting: (() => void)[] = [];
  stream.on("error", () => {}); // the peer is killed at the end of a section
  stream.on("data", (b: Buffer) => {
    if (b.length !== payload.length) throw new Error(`echo returned ${b.length} bytes, sent ${payload.length}`);
    waiting.shift()!();
  });
  return {
    call: () =>
      new Promise<void>((r) => {
        waiting.push(r);
        stream.write(payload);
      }),
    close: () => {
      stream.end();
      client.close();
    },
  };
}

/**
 * The client side of the router path. Like the raw baseline it sends one pre-encoded message (the request is the
 * same every time; requestId 0) and takes replies in order, so neither side pays client-side protobuf encoding.
 */
const FastRouterClient = makeGenericClientConstructor(
  {
    ...RouterService,
    forwardStream: {
      ...RouterService.forwardStream,
      requestSerialize: (v: Buffer | ForwardRequest) =>
        Buffer.isBuffer(v) ? v : Buffer.from(ForwardRequest.encode(v).finish()),
      responseDeserialize: decodeForwardResponse,
    },
  },
  "switchyard.v1.Router",
);

function routerChannel(address: string, req: ForwardRequest, expectBytes: number): Channel {
  const client = new FastRouterClient(address, credentials.createInsecure(), CLIENT_CHANNEL_OPTIONS);
  const stream = (
    client as unknown as { forwardStream(): ClientDuplexStream<Buffer, ForwardResponse> }
  ).forwardStream();
  const encoded = Buffer.from(ForwardRequest.encode({ ...req, requestId: 0n }).finish());
  const waiting: { res: () => void; rej: (e: Error) => void }[] = [];
  stream.on("error", () => {}); // the router is killed at the end of a section
  stream.on("data", (r: ForwardResponse) => {
    const w = waiting.shift()!;
    if (r.error) w.rej(fromRpcError(r.error));
    else if (r.hidden!.data.length !== expectBytes) w.rej(new Error(`router returned ${r.hidden!.data.length} bytes`));
    else w.res();
  });
  return {
    call: () =>
      new Promise<void>((res, rej) => {
        waiting.push({ res, rej });
        stream.write(encoded);
      }),
    close: () => {
      stream.end();
      client.close();
    },
  };
}

/**
 * The same requests on the router's TCP data path for engines (preface SYRF, length-prefixed ForwardRequest frames,
 * the request encoded once as for routerChannel). Replies may come in any order; each resolves the oldest call,
 * which is all a throughput window needs, and each is checked for an error and its size.
 */
function routerDataChannel(port: number, req: ForwardRequest, expectBytes: number): Channel {
  const s = connect({ port, host: "127.0.0.1", noDelay: true });
  s.on("error", () => {}); // the router is killed at the end of a section
  s.write(ROUTER_DATA_PREFACE);
  const encoded = Buffer.from(ForwardRequest.encode({ ...req, requestId: 0n }).finish());
  const waiting: { res: () => void; rej: (e: Error) => void }[] = [];
  const reader = new FrameReader(512 << 20, false, (f) => {
    const r = decodeForwardResponse(f);
    const w = waiting.shift()!;
    if (r.error) w.rej(fromRpcError(r.error));
    else if (r.hidden!.data.length !== expectBytes) w.rej(new Error(`router returned ${r.hidden!.data.length} bytes`));
    else w.res();
  });
  s.on("data", (chunk: Buffer) => reader.push(chunk));
  return {
    call: () =>
      new Promise<void>((res, rej) => {
        waiting.push({ res, rej });
        writeFrame(s, encoded);
      }),
    close: () => s.destroy(),
  };
}

function tcpChannel(port: number, payload: Buffer): Promise<Channel> {
  return new Promise((res) => {
    const s: Socket = connect(port, "127.0.0.1", () => {
      s.setNoDelay(true);
      s.on("error", () => {});
      let got = 0;
      const waiting: (() => void)[] = [];
      s.on("data", (d) => {
        got += d.length;
        while (got >= payload.length && waiting.length > 0) {
          got -= payload.length;
          waiting.shift()!();
        }
      });
      res({
        call: () =>
          new Promise<void>((r) => {
            waiting.push(r);
            s.write(payload);
          }),
        close: () => s.destroy(),
      });
    });
  });
}

interface Measure {
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  calls: number;
}

/** `conc` loops issuing calls back to back for `seconds`; returns calls/s and latency quantiles. */
async function measure(ch: Channel, conc: number, seconds: number): Promise<Measure> {
  const lat: number[] = [];
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (performance.now() < end) {
        const t = performance.now();
        await ch.call();
        lat.push(performance.now() - t);
      }
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.max(0, Math.ceil(p * lat.length) - 1))];
  return { perSecond: lat.length / wall, p50Ms: q(0.5), p99Ms: q(0.99), calls: lat.length };
}

function bf16Payload(T: number, d: number): Buffer {
  const v = new Float32Array(T * d);
  for (let i = 0; i < v.length; i++) v[i] = Math.sin(i * 0.37);
  return encodeTensor(v, [T, d], DType.BFLOAT16).data;
}

function assignmentTop1(T: number, expert = 0): ForwardRequest["gate"] {
  return {
    $case: "assignment",
    value: {
      expertIds: encodeTensor(new Int32Array(T).fill(expert), [T, 1], DType.INT32),
      weights: encodeTensor(new Float32Array(T).fill(1), [T, 1], DType.FLOAT32),
    },
  };
}

async function overhead() {
  const [echoPort] = [await start("echo")];
  const echoProc = children.at(-1)!;
  const fwdPort = await start("forwarder", `127.0.0.1:${echoPort}`);
  const fwdProc = children.at(-1)!;
  const dataEchoPort = await start("dataEcho");
  const dataEchoProc = children.at(-1)!;
  const dfwdPort = await start("dataForwarder", dataEchoPort);
  const dfwdProc = children.at(-1)!;
  const tcpEcho = await start("tcpEcho");
  const tcpFwd = await start("tcpForwarder", tcpEcho);
  const [workerPort] = await start<number[]>("fakeWorkers", 1);
  const workerProc = children.at(-1)!;
  const routerSpec = {
    model: "noop",
    d: D,
    experts: 8,
    workers: ["w0"],
    endpoints: { w0: `127.0.0.1:${workerPort}` },
    replicas: [Array.from({ length: 8 }, () => [0])],
    policy: { batching: { enabled: false } },
  } satisfies RouterSpec;
  const { port: routerPort, dataPort: routerDataPort } = await start<{ port: number; dataPort: number }>("router", {
    ...routerSpec,
    engineDataPath: true,
  } satisfies RouterSpec);
  const routerProc = children.at(-1)!;
  const routerGrpcPort = await start("router", { ...routerSpec, transport: "grpc" } satisfies RouterSpec);
  const routerGrpcProc = children.at(-1)!;
  const barePort = await start("bareRouter", `127.0.0.1:${workerPort}`);
  const bareProc = children.at(-1)!;
  /** Runs a window and returns its Measure plus CPU µs per call of the middle hop and of the far end. */
  const withCpu = async (ch: Channel, conc: number, secs: number, mid: ChildProcess, end: ChildProcess) => {
    const [m0, e0] = await Promise.all([cpuOf(mid), cpuOf(end)]);
    const r = await measure(ch, conc, secs);
    const [m1, e1] = await Promise.all([cpuOf(mid), cpuOf(end)]);
    return { ...r, midCpuUs: (m1 - m0) / r.calls, endCpuUs: (e1 - e0) / r.calls };
  };
  const rows = [];
  for (const T of (process.env.BENCH_TS ?? "1,16,256").split(",").map(Number)) {
    const payload = bf16Payload(T, D);
    const req: ForwardRequest = {
      pool: "bench",
      layer: 0,
      hidden: { dtype: DType.BFLOAT16, shape: [T, D], data: payload },
      gate: assignmentTop1(T),
      requestId: 0n,
    };
    const fwd = rawChannel(`127.0.0.1:${fwdPort}`, payload);
    const dfwd = rawChannel(`127.0.0.1:${dfwdPort}`, payload);
    const rtr = routerChannel(`127.0.0.1:${routerPort}`, req, payload.length);
    const rtrData = routerDataChannel(routerDataPort, req, payload.length);
    const rtrGrpc = routerChannel(`127.0.0.1:${routerGrpcPort}`, req, payload.length);
    const bare = routerChannel(`127.0.0.1:${barePort}`, req, payload.length);
    const tcp = await tcpChannel(tcpFwd, payload);
    // Paired, interleaved windows: machine load on this shared box drifts by the second, so every round measures
    // router and baseline back to back (order alternating) and the figure is the median of per-round ratios.
    // Warm-up: V8 needs a few thousand calls to optimise each path (router CPU per request falls ~3x over the
    // first ~10k requests); both sides get the same, and a served router runs for days.
    const warm = Number(process.env.BENCH_WARMUP_S ?? 2);
    await measure(fwd, 4, warm);
    await measure(rtr, 4, warm);
    await measure(rtrData, 4, warm);
    await measure(bare, 4, warm);
    await measure(rtrGrpc, 4, warm);
    await measure(dfwd, 4, warm);
    await measure(tcp, 1, 0.3);
    const rounds = ROUNDS;
    const win = (SECONDS * (T === 256 ? 1.5 : 1)) / rounds;
    const tput: { r: number; f: number; b: number; g: number; df: number; rd: number }[] = [];
    const rtt: { r: number; f: number; t: number }[] = [];
    const cpu: {
      router: number;
      worker: number;
      forwarder: number;
      echo: number;
      bare: number;
      routerGrpc: number;
      dataForwarder: number;
      routerEngineData: number;
    }[] = [];
    for (let k = 0; k < rounds; k++) {
      let r: Awaited<ReturnType<typeof withCpu>>;
      let f: Awaited<ReturnType<typeof withCpu>>;
      let b: Awaited<ReturnType<typeof withCpu>>;
      let g: Awaited<ReturnType<typeof withCpu>>;
      let df: Awaited<ReturnType<typeof withCpu>>;
      let rd: Awaited<ReturnType<typeof withCpu>>;
      // Router and forwarder back to back, the router on the engines' data path beside the router, the other three
      // around them; the order reverses every round.
      if (k % 2 === 0) {
        g = await withCpu(rtrGrpc, 4, win, routerGrpcProc, workerProc);
        rd = await withCpu(rtrData, 4, win, routerProc, workerProc);
        r = await withCpu(rtr, 4, win, routerProc, workerProc);
        f = await withCpu(fwd, 4, win, fwdProc, echoProc);
        b = await withCpu(bare, 4, win, bareProc, workerProc);
        df = await withCpu(dfwd, 4, win, dfwdProc, dataEchoProc);
      } else {
        df = await withCpu(dfwd, 4, win, dfwdProc, dataEchoProc);
        b = await withCpu(bare, 4, win, bareProc, workerProc);
        f = await withCpu(fwd, 4, win, fwdProc, echoProc);
        r = await withCpu(rtr, 4, win, routerProc, workerProc);
        rd = await withCpu(rtrData, 4, win, routerProc, workerProc);
        g = await withCpu(rtrGrpc, 4, win, routerGrpcProc, workerProc);
      }
      tput.push({
        r: r.perSecond,
        f: f.perSecond,
        b: b.perSecond,
        g: g.perSecond,
        df: df.perSecond,
        rd: rd.perSecond,
      });
      cpu.push({
        router: r.midCpuUs,
        worker: r.endCpuUs,
        forwarder: f.midCpuUs,
        echo: f.endCpuUs,
        bare: b.midCpuUs,
        routerGrpc: g.midCpuUs,
        dataForwarder: df.midCpuUs,
        routerEngineData: rd.midCpuUs,
      });
      const rr = await measure(rtr, 1, win / 2);
      const ff = await measure(fwd, 1, win / 2);
      const tt = await measure(tcp, 1, win / 3);
      rtt.push({ r: rr.p50Ms, f: ff.p50Ms, t: tt.p50Ms });
    }
    fwd.close();
    dfwd.close();
    rtrGrpc.close();
    rtr.close();
    rtrData.close();
    bare.close();
    tcp.close();
    const fwdTput = median(tput.map((x) => x.f));
    const rtrTput = median(tput.map((x) => x.r));
    const rRt = { p50Ms: median(rtt.map((x) => x.r)) };
    const fRt = { p50Ms: median(rtt.map((x) => x.f)) };
    const tRt = { p50Ms: median(rtt.map((x) => x.t)) };
    const row = {
      T,
      bytes_per_message: payload.length,
      router_req_per_s: +rtrTput.toFixed(1),
      forwarder_req_per_s: +fwdTput.toFixed(1),
      router_MBps: +((rtrTput * payload.length) / 1e6).toFixed(1),
      forwarder_MBps: +((fwdTput * payload.length) / 1e6).toFixed(1),
      overhead_ratio: +median(tput.map((x) => x.r / x.f)).toFixed(3),
      overhead_ratio_per_round: tput.map((x) => +(x.r / x.f).toFixed(3)),
      grpc_hop_ratio: +median(tput.map((x) => x.g / x.f)).toFixed(3),
      grpc_hop_ratio_per_round: tput.map((x) => +(x.g / x.f).toFixed(3)),
      same_transport_ratio: +median(tput.map((x) => x.r / x.df)).toFixed(3),
      same_transport_ratio_per_round: tput.map((x) => +(x.r / x.df).toFixed(3)),
      data_path_speedup: +median(tput.map((x) => x.r / x.g)).toFixed(3),
      engine_data_speedup: +median(tput.map((x) => x.rd / x.r)).toFixed(3),
      engine_data_speedup_per_round: tput.map((x) => +(x.rd / x.r).toFixed(3)),
      bare_ratio: +median(tput.map((x) => x.b / x.f)).toFixed(3),
      bare_ratio_per_round: tput.map((x) => +(x.b / x.f).toFixed(3)),
      router_vs_bare: +median(tput.map((x) => x.r / x.b)).toFixed(3),
      router_req_per_s_per_round: tput.map((x) => +x.r.toFixed(0)),
      forwarder_req_per_s_per_round: tput.map((x) => +x.f.toFixed(0)),
      // CPU per request, immune to the other load on the machine: what each hop costs, not how long it waited.
      router_cpu_us_per_req: +median(cpu.map((x) => x.router)).toFixed(1),
      forwarder_cpu_us_per_req: +median(cpu.map((x) => x.forwarder)).toFixed(1),
      bare_router_cpu_us_per_req: +median(cpu.map((x) => x.bare)).toFixed(1),
      router_grpc_hop_cpu_us_per_req: +median(cpu.map((x) => x.routerGrpc)).toFixed(1),
      router_engine_data_cpu_us_per_req: +median(cpu.map((x) => x.routerEngineData)).toFixed(1),
      data_forwarder_cpu_us_per_req: +median(cpu.map((x) => x.dataForwarder)).toFixed(1),
      noop_worker_cpu_us_per_req: +median(cpu.map((x) => x.worker)).toFixed(1),
      echo_cpu_us_per_req: +median(cpu.map((x) => x.echo)).toFixed(1),
      cpu_ratio: +median(cpu.map((x) => x.forwarder / x.router)).toFixed(3),
      router_rtt_ms: +rRt.p50Ms.toFixed(3),
      forwarder_rtt_ms: +fRt.p50Ms.toFixed(3),
      tcp_two_hop_rtt_ms: +tRt.p50Ms.toFixed(3),
      tcp_ratio: +median(rtt.map((x) => x.r / x.t)).toFixed(2),
      rtt_ratio_vs_forwarder: +median(rtt.map((x) => x.f / x.r)).toFixed(3),
    };
    console.log(JSON.stringify(row));
    rows.push(row);
  }
  stopAll();
  return rows;
}

async function batching(cfg: { d: number; f: number; E: number }) {
  const dir = await mkdtemp(join(tmpdir(), "sy-bench-router-"));
  const { d, f, E } = cfg;
  console.log(`batching: generating a mixtral-like layer (d=${d}, f=${f}, ${E} experts, top-2, bf16) ...`);
  await generateCheckpoint({
    family: "mixtral",
    dir,
    seed: 5,
    layers: 1,
    hiddenSize: d,
    intermediateSize: f,
    experts: E,
  });
  const ids = ["w0", "w1"];
  const { plan } = planPlacement({ pool: "bench", layers: 1, experts: E, workers: ids, redundantExperts: 0 });
  const planFile = join(dir, "plan.json");
  await writeFile(planFile, JSON.stringify(plan));
  const ports = [];
  for (const id of ids) ports.push(await start("worker", { checkpoint: dir, id, planFile }));
  const endpoints = Object.fromEntries(ids.map((id, i) => [id, `127.0.0.1:${ports[i]}`]));
  const streams = 64;
  const routers: Record<"off" | "on", number> = { off: 0, on: 0 };
  for (const mode of ["off", "on"] as const) {
    routers[mode] = await start("router", {
      model: { checkpoint: dir },
      d,
      experts: E,
      workers: ids,
      endpoints,
      replicas: plan.replicas,
      policy: { batching: { enabled: mode === "on", maxWaitMs: MAX_WAIT_MS, maxBatchTokens: 256 } },
    } satisfies RouterSpec);
  }
  const channelsOf = (port: number) =>
    Array.from({ length: streams }, (_, i) => {
      const rnd = mulberry32(1000 + i); // each stream its own token: routing spread over the experts
      const h = Float32Array.from({ length: d }, () => (rnd() * 2 - 1) * 1.7);
      const req: ForwardRequest = {
        pool: "bench",
        layer: 0,
        hidden: encodeTensor(h, [1, d], DType.BFLOAT16),
        gate: undefined,
        requestId: 0n,
      };
      return routerChannel(`127.0.0.1:${port}`, req, d * 2);
    });
  const channels = { off: channelsOf(routers.off), on: channelsOf(routers.on) };
  const lat: Record<"off" | "on", number[]> = { off: [], on: [] };
  // one decode loop per stream: send 1 token, wait for its answer, repeat
  const run = async (mode: "off" | "on", secs: number, record: boolean) => {
    const end = performance.now() + secs * 1000;
    const t0 = performance.now();
    let n = 0;
    await Promise.all(
      channels[mode].map(async (ch) => {
        while (performance.now() < end) {
          const t = performance.now();
          await ch.call();
          if (record) lat[mode].push(performance.now() - t);
          n++;
        }
      }),
    );
    return n / ((performance.now() - t0) / 1000);
  };
  await run("off", 1, false);
  await run("on", 1, false);
  // Interleaved windows, order alternating, as for the overhead figure.
  const rounds = Math.max(2, Math.round(ROUNDS / 2));
  const tps: { off: number; on: number }[] = [];
  for (let k = 0; k < rounds; k++) {
    const win = (SECONDS * 1.5) / rounds;
    if (k % 2 === 0) {
      const off = await run("off", win, true);
      tps.push({ off, on: await run("on", win, true) });
    } else {
      const on = await run("on", win, true);
      tps.push({ on, off: await run("off", win, true) });
    }
    console.log(
      JSON.stringify({ round: k, tokens_per_s_off: +tps[k].off.toFixed(1), tokens_per_s_on: +tps[k].on.toFixed(1) }),
    );
  }
  for (const m of ["off", "on"] as const) for (const ch of channels[m]) ch.close();
  const q = (xs: number[], p: number) => {
    const s2 = xs.slice().sort((a, b) => a - b);
    return s2[Math.min(s2.length - 1, Math.ceil(p * s2.length) - 1)];
  };
  const out = {
    off: { tokensPerS: median(tps.map((x) => x.off)), p50Ms: q(lat.off, 0.5), p99Ms: q(lat.off, 0.99) },
    on: { tokensPerS: median(tps.map((x) => x.on)), p50Ms: q(lat.on, 0.5), p99Ms: q(lat.on, 0.99) },
  };
  const speedup = median(tps.map((x) => x.on / x.off));
  stopAll();
  return {
    model: `mixtral-like 1 layer, d=${d}, f=${f}, ${E} experts top-2, bf16, 2 CPU workers (native backend)`,
    streams,
    policy_on: { maxWaitMs: MAX_WAIT_MS, maxBatchTokens: 256 },
    off: {
      tokens_per_s: +out.off.tokensPerS.toFixed(1),
      p50_ms: +out.off.p50Ms.toFixed(2),
      p99_ms: +out.off.p99Ms.toFixed(2),
    },
    on: {
      tokens_per_s: +out.on.tokensPerS.toFixed(1),
      p50_ms: +out.on.p50Ms.toFixed(2),
      p99_ms: +out.on.p99Ms.toFixed(2),
    },
    batching_speedup: +speedup.toFixed(2),
    speedup_per_round: tps.map((x) => +(x.on / x.off).toFixed(2)),
    batching_p99_ratio: +(out.on.p99Ms / out.off.p99Ms).toFixed(3),
  };
}

async function decision() {
  const d = 7168;
  const T = 64;
  const E = 256;
  const W = 4;
  const workerPorts = await start<number[]>("fakeWorkers", W);
  const workers = workerPorts.map((_, i) => `w${i}`);
  const replicas = [Array.from({ length: E }, (_, e) => [e % W])];
  const policy = { batching: { enabled: false } };
  const routerPort = await start("router", {
    model: "deepseek",
    d,
    experts: E,
    workers,
    endpoints: Object.fromEntries(workers.map((w, i) => [w, `127.0.0.1:${workerPorts[i]}`])),
    replicas,
    policy,
  } satisfies RouterSpec);
  // Independent N(0,1)-ish logits per token and expert: routing spreads like a trained gate's (~220 experts touched).
  const rnd = mulberry32(17);
  const logits = Float32Array.from({ length: T * E }, () => (rnd() + rnd() + rnd() - 1.5) * 2);
  const req: ForwardRequest = {
    pool: "bench",
    layer: 0,
    hidden: { dtype: DType.BFLOAT16, shape: [T, d], data: bf16Payload(T, d) },
    gate: { $case: "routerLogits", value: encodeTensor(logits, [T, E], DType.FLOAT32) },
    requestId: 0n,
  };
  const ch = routerChannel(`127.0.0.1:${routerPort}`, req, T * d * 2);
  await measure(ch, 1, 0.5);
  const rt = await measure(ch, 1, SECONDS);
  ch.close();
  stopAll();

  // The same decision, in process, with the router's own modules: gate -> assignments -> capacity -> layout.
  const model = deepseekModel(d);
  const pol = resolveRoutingPolicy(policy);
  const view = { outstanding: () => 0, latencyMs: () => 0, resident: () => true, healthy: () => true };
  const decide = () => {
    const r = model.route(0, logits, T, pol.gating);
    const as = collectRouted([r]);
    const cap = applyCapacity(as, E, pol.gating.capacityFactor, pol.gating.overflow, [r]);
    return layoutRound(cap.rounds[0], {
      layer: 0,
      replicas: replicas[0],
      workers: W,
      chooser: { weights: pol.placement, loadScale: 64, view },
      splitTokens: 64,
    });
  };
  for (let i = 0; i < 200; i++) decide();
  const N = 2000;
  const t0 = performance.now();
  let touched = 0;
  for (let i = 0; i < N; i++) touched = decide().expertsTouched;
  const decideMs = (performance.now() - t0) / N;
  // What it would cost the router to compute the logits itself (gate GEMM 64 x 7168 x 256), in TypeScript.
  const { routerLogits } = await import("@switchyard/moe");
  const gw = Float32Array.from({ length: E * d }, (_, i) => Math.sin(i) * 0.01);
  const hx = Float32Array.from({ length: T * d }, (_, i) => Math.cos(i));
  const t1 = performance.now();
  for (let i = 0; i < 3; i++) routerLogits(hx, gw, d);
  const gemmMs = (performance.now() - t1) / 3;
  // and with the router's addon, which is what the router uses when it is built (checkpoint-model.ts)
  const { routerAddon } = await import("../router-service/src/core/native-combine.js");
  const { transposeGate } = await import("../router-service/src/checkpoint-model.js");
  const addon = routerAddon();
  let nativeMs: number | null = null;
  if (addon) {
    const gt = transposeGate(gw, E, d);
    const out = new Float32Array(T * E);
    addon.routerLogits(hx, gt, T, d, E, out);
    const t2 = performance.now();
    for (let i = 0; i < 10; i++) addon.routerLogits(hx, gt, T, d, E, out);
    nativeMs = (performance.now() - t2) / 10;
  }
  return {
    setup: `DeepSeek-V3 gate (256 experts, 8 groups / 4 kept, top-8, bias, scale 2.5), ${T} tokens, router logits given, d=${d} bf16, ${W} no-op workers`,
    experts_touched: touched,
    decision_ms: +decideMs.toFixed(4),
    round_trip_ms: +rt.p50Ms.toFixed(3),
    decision_fraction: +(decideMs / rt.p50Ms).toFixed(4),
    logits_from_weights_ms: +gemmMs.toFixed(2),
    logits_from_weights_native_ms: nativeMs === null ? null : +nativeMs.toFixed(2),
    note: "decision = gating + capacity + replica layout, timed in process with the router's modules; round trip = Forward p50 through the router process",
  };
}

async function main() {
  process.on("exit", stopAll);
  const started = new Date().toISOString();
  const loadAtStart = loadavg();
  console.log(
    `router bench: ${cpus().length} cpus (${cpus()[0]?.model}), load ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}`,
  );
  // BENCH_ONLY=overhead|batching|decision runs one section (for iterating; the committed file comes from a full run)
  const only = process.env.BENCH_ONLY;
  const ov = !only || only === "overhead" ? await overhead() : [];
  // Primary: Mixtral's shape scaled down (d 4096 -> 1024, f 14336 -> 3584, 8 experts, top-2), where a CPU worker
  // spends real time per expert. Secondary: small experts (d=256, f=512), the regime of GPU workers, whose expert
  // compute per decode token is microseconds, so per-message costs are what batching saves.
  const bt =
    !only || only === "batching"
      ? await batching({ d: 1024, f: 3584, E: 8 })
      : ({} as Awaited<ReturnType<typeof batching>>);
  const btSmall =
    (!only || only === "batching") && process.env.BENCH_SMALL !== "0"
      ? await batching({ d: 256, f: 512, E: 8 })
      : ({} as Awaited<ReturnType<typeof batching>>);
  const dc = !only || only === "decision" ? await decision() : ({} as Awaited<ReturnType<typeof decision>>);
  if (only) {
    // A single section never replaces the committed results file; BENCH_OUT keeps it where asked.
    const section = {
      bench: "router",
      only,
      started,
      machine: { cpus: cpus().length, loadavg_at_start: loadAtStart },
      ov,
      bt,
      btSmall,
      dc,
    };
    if (process.env.BENCH_OUT) writeFileSync(process.env.BENCH_OUT, `${JSON.stringify(section, null, 2)}\n`);
    console.log(JSON.stringify({ ov, bt, btSmall, dc }));
    process.exit(0);
  }
  const result = {
    bench: "router",
    started,
    machine: { cpus: cpus().length, model: cpus()[0]?.model, loadavg_at_start: loadAtStart, node: process.version },
    seconds_per_measure: SECONDS,
    overhead: {
      setup: `d=${D} bf16, explicit top-1 assignment, no-op (echo) worker, router batching off, router -> worker over the worker's TCP data path (the router's default; grpc_hop_ratio: over the gRPC stream); baseline: two-hop grpc-js bidi forwarder of the same bytes, same channel options (flow_control_window 16 MiB, raised server window); same_transport_ratio: against a forwarder with a gRPC client hop and a data-path second hop; 4 requests in flight on one stream for throughput, 1 for round trips`,
      rows: ov,
      overhead_ratio: Object.fromEntries(ov.map((r) => [`T${r.T}`, r.overhead_ratio])),
      tcp_ratio: Object.fromEntries(ov.map((r) => [`T${r.T}`, r.tcp_ratio])),
      grpc_hop_ratio: Object.fromEntries(ov.map((r) => [`T${r.T}`, r.grpc_hop_ratio])),
      same_transport_ratio: Object.fromEntries(ov.map((r) => [`T${r.T}`, r.same_transport_ratio])),
      bare_ratio: Object.fromEntries(ov.map((r) => [`T${r.T}`, r.bare_ratio])),
      engine_data_speedup: Object.fromEntries(ov.map((r) => [`T${r.T}`, r.engine_data_speedup])),
      goal: "overhead_ratio >= 0.8 at every T",
    },
    batching: { ...bt, goal: "batching_speedup >= 5, batching_p99_ratio <= 1" },
    batching_small_experts: btSmall,
    decision: { ...dc, goal: "decision_fraction <= 0.1" },
  };
  const outPath = process.env.BENCH_OUT ?? join(HERE, "results", "router.json");
  mkdirSync(dirname(outPath), { recursive: true });
  writeFileSync(outPath, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${outPath}`);
  console.log(
    JSON.stringify({
      overhead_ratio: result.overhead.overhead_ratio,
      tcp_ratio: result.overhead.tcp_ratio,
      grpc_hop_ratio: result.overhead.grpc_hop_ratio,
      same_transport_ratio: result.overhead.same_transport_ratio,
      bare_ratio: result.overhead.bare_ratio,
      engine_data_speedup: result.overhead.engine_data_speedup,
      batching_speedup: bt.batching_speedup,
      batching_p99_ratio: bt.batching_p99_ratio,
      batching_speedup_small_experts: btSmall.batching_speedup,
      decision_fraction: dc.decision_fraction,
    }),
  );
  process.exit(0);
}

if (process.argv[2] === "child") {
  const [role, arg] = [process.argv[3], process.argv[4] ? JSON.parse(process.argv[4]) : undefined];
  const run: Record<string, () => Promise<unknown>> = {
    echo: roleEcho,
    forwarder: () => roleForwarder(arg),
    tcpEcho: roleTcpEcho,
    dataEcho: roleDataEcho,
    dataForwarder: () => roleDataForwarder(arg),
    tcpForwarder: () => roleTcpForwarder(arg),
    fakeWorkers: () => roleFakeWorkers(arg),
    router: () => roleRouter(arg),
    bareRouter: () => serveBareRouter(arg, "bench"),
    worker: () => roleWorker(arg),
  };
  process.on("SIGINT", () => process.exit(0)); // lets --cpu-prof write its profile
  // CPU time used so far, on request: the overhead figure in CPU terms is immune to other load on the machine.
  process.on("message", (m) => {
    if (m === "cpu") {
      const u = process.cpuUsage();
      const elu = performance.eventLoopUtilization();
      process.send!({ cpuUs: u.user + u.system, activeUs: elu.active * 1000 });
    }
  });
  run[role]().then(
    (port) => process.send!({ port }),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
} else {
  await main();
}
