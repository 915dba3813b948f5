#!/usr/bin/env node
// `npm start`: the whole system on one machine. Generates (or reuses, under .cache/) a checkpoint, plans a
// placement, starts N expert workers and a router as local processes, drives engine-like load through the router
// (concurrent sequences, Zipf-skewed tokens with locality, every MoE layer in turn), shows live progress, prints
// a final table, and checks every answer against the in-process reference: exit 1 on any wrong answer.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { mkdir, readFile, rm, statfs, writeFile } from "node:fs/promises";
import { availableParallelism, constants as osConstants, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { credentials, Metadata } from "@grpc/grpc-js";
import {
  checkpointTempDir,
  DATA_PATH_NODE_FLAGS,
  defaultSpec,
  gateConfigFromSpec,
  generateCheckpointAtomic,
  type ModelFamily,
  type ModelSpec,
  moeLayers,
  openCheckpoint,
  type RoutingPolicy,
  removeStaleCheckpointTemps,
  resolveRoutingPolicy,
  sharedSlices,
} from "@switchyard/moe";
import { DType, ExpertWorkerClient, type WorkerStatus } from "@switchyard/protocol";
import { CLIENT_CHANNEL_OPTIONS } from "../dispatch/worker-conn.js";
import { runSmoke } from "../smoke/smoke.js";
import { addStats, CLIENT_GRACE_MS, DriveStats, REQUEST_TIMEOUT_MS } from "./drive.js";
import { startDrivers } from "./drivers.js";
import { DEFAULT_TRAFFIC, parsePromText, quantile } from "./loadgen.js";
import { localPlan } from "./local-plan.js";
import { cpuByThread, cpuSeconds, threadCpuLine } from "./proc-cpu.js";
import { checkRunFits, runFootprint, WontFitError } from "./resources.js";
import { verdict } from "./verdict.js";
import type { VerifyResult } from "./verifier.js";
import { readSharedLayers, referenceBytes, VerifierPool, type VerifyMode } from "./verifier-pool.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

export const SIZES = {
  tiny: { layers: 2, hiddenSize: 128, intermediateSize: 256, experts: 8 },
  small: { layers: 4, hiddenSize: 256, intermediateSize: 512, experts: 16 },
  medium: { layers: 4, hiddenSize: 1024, intermediateSize: 2048, experts: 32 },
  full: { layers: 2 }, // the family's own dimensions (FULL_SIZE)
} as const;
export type Size = keyof typeof SIZES;
export type LocalFamily = Exclude<ModelFamily, "custom">;

/**
 * `--size full`: the MoE dimensions of the model each family is named after (Mixtral-8x7B, Qwen1.5-MoE-A2.7B,
 * Qwen3-30B-A3B, DeepSeek-V3), with the families' other defaults and SIZES.full's layer count. Gigabytes of
 * checkpoint (Mixtral: 5.6 GB for 2 layers, DeepSeek-V3: 45 GB); meant for a GPU worker.
 */
export const FULL_SIZE: Record<LocalFamily, Partial<ModelSpec>> = {
  mixtral: { hiddenSize: 4096, intermediateSize: 14336, experts: 8, topK: 2 },
  "qwen2-moe": { hiddenSize: 2048, intermediateSize: 1408, experts: 60, topK: 4, sharedIntermediateSize: 5632 },
  "qwen3-moe": { hiddenSize: 2048, intermediateSize: 768, experts: 128, topK: 8 },
  "deepseek-v3": { hiddenSize: 7168, intermediateSize: 2048, experts: 256, topK: 8, nGroup: 8, topkGroup: 4 },
};

/** The spec fields the local mode generates for a family and size. */
export function localModel(family: LocalFamily, size: Size): Partial<ModelSpec> {
  if (size === "full") return { ...FULL_SIZE[family], layers: SIZES.full.layers };
  const dims = SIZES[size];
  // DeepSeek-V3's group-limited routing wants several experts per group
  return { ...dims, experts: family === "deepseek-v3" ? dims.experts * 2 : dims.experts };
}

export interface LocalOptions {
  family: LocalFamily;
  size: Size;
  workers: number;
  concurrency: number;
  durationS: number;
  policy: RoutingPolicy;
  dtype: "bf16" | "fp32";
  seed: number;
  prefill: number;
  redundant: number | null;
  cacheCapacity: number | null;
  /** load generators: 1 on the main thread, more as worker threads (the sequences dealt round-robin) */
  drivers: number;
  /** router processes over the same workers; the sequences are dealt among them */
  routers: number;
  /** spread the workers over this many GPUs (worker i sees GPU i mod gpus); null: each sees what this process does */
  gpus: number | null;
  tolerance: number | null;
  /** null: "all" up to medium, "sample" at full size */
  verify: VerifyMode | null;
  /** reference threads; null: 1 when checking every answer, else up to 8 of the cores the processes leave */
  verifyThreads: number | null;
  /** where the shared expert runs; null: on the workers where it splits into slices, else in the router */
  sharedExperts: "workers" | "router" | null;
  /**
   * who computes the router logits from the hidden states: the router (requests carry hidden states only), or the
   * engine (the drivers, standing in for it, send router_logits with each request, as an engine that runs the gate
   * on its own GPU would)
   */
  gate: "router" | "engine";
  /** sequences per Forward: an engine's step over its batch (1: each sequence calls the router on its own) */
  engineBatch: number;
  /** how the drivers reach the router: its TCP data path (data-server.ts) or gRPC ForwardStreams */
  engineTransport: "data" | "grpc";
  /** each request's deadline: a router that answers none by then is named in the errors, and the run ends */
  requestTimeoutS: number;
  policyFile?: string;
}

const USAGE = `usage: npm start -- [flags]
  --family mixtral|qwen2-moe|qwen3-moe|deepseek-v3   model family (default mixtral)
  --size tiny|small|medium|full   model size (default tiny: 2 layers, d=128, 8 experts; full: the family's real
                                  dimensions with 2 MoE layers, e.g. Mixtral-8x7B's d=4096, f=14336; for GPU workers)
  --workers N                     expert worker processes (default 2)
  --concurrency N                 concurrent sequences (default 16)
  --duration S                    seconds of load (default 20)
  --policy FILE|JSON              RoutingPolicy (docs/CONTRACTS.md), e.g. '{"batching":{"enabled":false}}'
  --dtype bf16|fp32               activation dtype on the wire (default bf16)
  --prefill N                     tokens in each sequence's first step (default 8; then 1 per step)
  --redundant N                   extra expert copies per layer in the placement (default experts/4)
  --cache-capacity N              resident experts per worker (default: all it serves)
  --drivers N                     threads generating the load (default 1; the sequences are dealt among them). One
                                  JavaScript thread bounds a run near 4000 forwards/s at the full sizes
  --routers N                     router processes over the same workers, the sequences dealt among them (as a
                                  Service spreads engines over router replicas; default 1)
  --gpus N                        spread the workers over N GPUs: worker i sees GPU i mod N (CUDA_VISIBLE_DEVICES;
                                  default: every worker sees what this process sees)
  --seed N                        checkpoint and traffic seed (default 1)
  --tolerance X                   max relative error per answer (default 1e-2 bf16, 1e-4 fp32)
  --verify all|sample             check every answer against the reference, or only those that find a reference
                                  thread idle (default all; sample at --size full, where the reference is slow)
  --verify-threads N              reference threads (default 1 for all, up to 8 for sample)
  --shared-experts workers|router where Qwen2-MoE's and DeepSeek-V3's shared expert runs: on the workers, as slices
                                  of the routed experts' width placed like experts (default), or in the router
  --gate router|engine            who computes the router logits: the router from the hidden states (default), or
                                  the engine, whose part the drivers play (each request then carries router_logits)
  --engine-batch N                sequences per Forward (default 1: every sequence calls the router on its own). N
                                  sequences then step together, as an engine's step calls each MoE layer once with
                                  its whole batch's tokens; fewer, larger calls
  --engine-transport data|grpc    how the drivers, standing in for engines, reach the router: its TCP data path
                                  (default; one connection per router per driver thread) or gRPC ForwardStreams
                                  (one per sequence)
  --request-timeout S             each request's deadline (default 30, the router's own): a router that answers
                                  nothing by then (stopped, stuck) fails the request naming it, and the run ends`;

export function parseLocalArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): LocalOptions {
  const o: LocalOptions = {
    family: "mixtral",
    size: "tiny",
    workers: 2,
    concurrency: 16,
    durationS: 20,
    policy: resolveRoutingPolicy({}),
    dtype: "bf16",
    seed: 1,
    prefill: 8,
    redundant: null,
    cacheCapacity: null,
    gpus: null,
    drivers: 1,
    routers: 1,
    tolerance: null,
    verify: null,
    verifyThreads: null,
    sharedExperts: null,
    gate: "router",
    engineBatch: 1,
    engineTransport: "data",
    requestTimeoutS: REQUEST_TIMEOUT_MS / 1000,
  };
  const int = (flag: string, v: string, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const n = Number(v);
    // Number() reads "" and " " as 0 and takes "0x10" and "1e3": only plain decimals are counts
    if (!/^-?\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max)
      throw new Error(
        `--${flag}: must be an integer ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`}, got "${v}"`,
      );
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--help" || a === "-h") throw new Error(USAGE);
    if (!a.startsWith("--")) throw new Error(`unexpected argument "${a}"\n${USAGE}`);
    const eq = a.indexOf("=");
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (v === undefined) throw new Error(`--${name}: missing value`);
    switch (name) {
      case "family":
        if (!["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3"].includes(v)) {
          throw new Error(`--family: one of mixtral, qwen2-moe, qwen3-moe, deepseek-v3, got "${v}"`);
        }
        o.family = v as LocalFamily;
        break;
      case "size":
        if (!(v in SIZES)) throw new Error(`--size: one of ${Object.keys(SIZES).join(", ")}, got "${v}"`);
        o.size = v as Size;
        break;
      case "workers":
        o.workers = int(name, v, 1);
        break;
      case "concurrency":
        o.concurrency = int(name, v, 1);
        break;
      case "duration": {
        const n = Number(v.replace(/s$/, ""));
        // finite: a run that never ends never prints its table or checks its answers
        if (!(n > 0) || !Number.isFinite(n)) throw new Error(`--duration: seconds > 0, got "${v}"`);
        o.durationS = n;
        break;
      }
      case "policy": {
        if (!v.trim().startsWith("{")) {
          o.policyFile = v; // read by loadPolicyFile: parsing stays free of I/O
          break;
        }
        let json: unknown;
        try {
          json = JSON.parse(v);
        } catch (e) {
          throw new Error(`--policy: not valid JSON (${(e as Error).message})`);
        }
        o.policy = resolveRoutingPolicy(json, "policy");
        break;
      }
      case "dtype":
        if (v !== "bf16" && v !== "fp32") throw new Error(`--dtype: bf16 or fp32, got "${v}"`);
        o.dtype = v;
        break;
      case "seed":
        // the generator's seeds are 32-bit (generate.ts checkSeed): a larger one would fail there, after the checks
        o.seed = int(name, v, 0, 2 ** 32 - 1);
        break;
      case "prefill":
        o.prefill = int(name, v, 1);
        break;
      case "redundant":
        o.redundant = int(name, v, 0);
        break;
      case "cache-capacity":
        o.cacheCapacity = int(name, v, 1);
        break;
      case "routers":
        o.routers = int(name, v, 1);
        break;
      case "drivers":
        o.drivers = int(name, v, 1);
        break;
      case "gpus":
        o.gpus = int(name, v, 1);
        break;
      case "tolerance": {
        const n = Number(v);
        // finite: Infinity (or 1e400, which reads as it) would pass every answer, a NaN one included
        if (!(n > 0) || !Number.isFinite(n)) throw new Error(`--tolerance: a finite number > 0, got "${v}"`);
        o.tolerance = n;
        break;
      }
      case "request-timeout": {
        const n = Number(v.replace(/s$/, ""));
        if (!(n > 0) || !Number.isFinite(n) || n * 1000 > 2 ** 31 - 1)
          throw new Error(`--request-timeout: seconds > 0 (at most 24 days), got "${v}"`);
        o.requestTimeoutS = n;
        break;
      }
      case "verify":
        if (v !== "all" && v !== "sample") throw new Error(`--verify: all or sample, got "${v}"`);
        o.verify = v;
        break;
      case "verify-threads":
        o.verifyThreads = int(name, v, 1);
        break;
      case "gate":
        if (v !== "router" && v !== "engine") throw new Error(`--gate: router or engine, got "${v}"`);
        o.gate = v;
        break;
      case "engine-batch":
        o.engineBatch = int(name, v, 1);
        break;
      case "engine-transport":
        if (v !== "data" && v !== "grpc") throw new Error(`--engine-transport: data or grpc, got "${v}"`);
        o.engineTransport = v;
        break;
      case "shared-experts":
        if (v !== "workers" && v !== "router") throw new Error(`--shared-experts: workers or router, got "${v}"`);
        o.sharedExperts = v;
        break;
      default:
        throw new Error(`unknown flag --${name}\n${USAGE}`);
    }
  }
  // Checks across flags, here rather than in runLocal: a flag error, before a checkpoint is generated or a worker
  // started
  if (o.sharedExperts === "workers" && sharedSlices(defaultSpec(o.family, localModel(o.family, o.size))) === 0)
    throw new Error(
      `--shared-experts workers: ${o.family} has no shared expert of a multiple of the routed experts' width`,
    );
  workerEnv(o.gpus, 0, env); // --gpus against CUDA_VISIBLE_DEVICES
  checkPolicyForModel(o);
  return o;
}

/**
 * The policy against the model it will route (--policy is read before the model exists): a topK over the experts a
 * token can reach, or top-p on a gate that is not a softmax, fails every request in the router, so it fails here,
 * before a checkpoint is generated or a process started. The same rules as CheckpointModel.route's.
 */
export function checkPolicyForModel(o: LocalOptions): void {
  const spec = defaultSpec(o.family, localModel(o.family, o.size));
  const g = o.policy.gating;
  const gate = gateConfigFromSpec(spec);
  const E = spec.experts;
  const model = `${o.family} --size ${o.size} (${E} experts${gate.scoring === "sigmoid" ? `, top-${gate.topkGroup} of ${gate.nGroup} groups` : ""})`;
  const topK = g.topK ?? gate.topK;
  if (topK > E) throw new Error(`--policy: gating.topK ${topK} exceeds the ${E} experts of ${model}`);
  const kept = gate.scoring === "sigmoid" ? gate.topkGroup * (E / gate.nGroup) : E;
  if (topK > kept)
    throw new Error(`--policy: gating.topK ${topK} exceeds the ${kept} experts a token of ${model} can reach`);
  if (g.topP !== null && gate.scoring !== "softmax")
    throw new Error(`--policy: gating.topP needs a softmax gate; ${model} gates with ${gate.scoring}`);
}

/** --policy FILE: read and validated here (parseLocalArgs stays free of I/O). */
async function loadPolicyFile(o: LocalOptions): Promise<void> {
  if (!o.policyFile) return;
  const text = await readFile(o.policyFile, "utf8").catch((e: Error) => {
    throw new Error(`--policy ${o.policyFile}: cannot read (${e.message})`);
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`--policy ${o.policyFile}: not valid JSON (${(e as Error).message})`);
  }
  o.policy = resolveRoutingPolicy(json, "policy");
  checkPolicyForModel(o);
}

/** How a child exited, for a message: "with code 1", or "on SIGKILL" (a signal leaves no code). */
export function exitHow(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `on ${signal}` : `with code ${code}`;
}

/**
 * The ports a child (worker or router) reports on its IPC channel once it listens. Children bind port 0: a port
 * picked here and handed over can be taken in between, e.g. as the source port of a connection to another child
 * (npm start failed once that way, "listen EADDRINUSE" in a worker).
 */
function readyPorts(
  child: ChildProcess,
  name: string,
  timeoutMs: number,
): Promise<{ port: number; metricsPort: number; dataPort: number | null }> {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`${name} not ready after ${timeoutMs / 1000} s`)), timeoutMs);
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(t);
      rej(new Error(`${name} exited ${exitHow(code, signal)}`));
    };
    child.once("exit", onExit);
    child.once("message", (m: unknown) => {
      clearTimeout(t);
      child.off("exit", onExit);
      const r = (m ?? {}) as { port?: unknown; metricsPort?: unknown; dataPort?: unknown };
      if (typeof r.port === "number" && typeof r.metricsPort === "number")
        res({ port: r.port, metricsPort: r.metricsPort, dataPort: typeof r.dataPort === "number" ? r.dataPort : null });
      else rej(new Error(`${name}: unexpected ready message ${JSON.stringify(m)}`));
    });
  });
}

/** The signals that stop the launcher, and with it every process it started. */
export const STOP_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** A full-size DeepSeek-V3 worker loads 45 GB before it is ready. */
const WARM_TIMEOUT_MS = 20 * 60_000;

/** The worker's second IPC message, `{ warmed }`: its served experts are loaded (expert-worker/src/main.ts). */
function warmedMessage(child: ChildProcess, name: string, timeoutMs: number): Promise<void> {
  return new Promise((res, rej) => {
    const done = () => {
      clearTimeout(t);
      child.off("exit", onExit);
      child.off("message", onMessage);
    };
    const t = setTimeout(() => {
      done();
      rej(new Error(`${name} still warming up after ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      done();
      rej(new Error(`${name} exited ${exitHow(code, signal)} before it was ready (its log above says why)`));
    };
    const onMessage = (m: unknown) => {
      if (m !== null && typeof m === "object" && "warmed" in m) {
        done();
        res();
      }
    };
    child.on("exit", onExit);
    child.on("message", onMessage);
  });
}

/**
 * SWITCHYARD_CPU_PROF_DIR=DIR: the router and the workers write V8 CPU profiles there (DIR/<name>.cpuprofile, on
 * their SIGTERM exit), to see where a process's CPU goes; Node does not take --cpu-prof from NODE_OPTIONS.
 */
function profileFlags(name: string): string[] {
  const dir = process.env.SWITCHYARD_CPU_PROF_DIR;
  return dir ? ["--cpu-prof", `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}.cpuprofile`] : [];
}

/** Preloaded into every child: it stops when this process's IPC channel to it closes (exit-with-parent.ts). */
const EXIT_WITH_PARENT = new URL("./exit-with-parent.js", import.meta.url).href;

function spawnProc(
  name: string,
  args: string[],
  children: Map<ChildProcess, string>,
  quiet: () => boolean,
  env: NodeJS.ProcessEnv = process.env,
): ChildProcess {
  const child = spawn(process.execPath, [...profileFlags(name), "--import", EXIT_WITH_PARENT, ...args], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe", "ipc"],
  });
  children.set(child, name);
  const relay = (chunk: Buffer) => {
    for (const line of chunk.toString().split("\n"))
      if (line.trim() && !quiet()) process.stderr.write(`  [${name}] ${line}\n`);
  };
  child.stdout!.on("data", relay);
  child.stderr!.on("data", (c: Buffer) => {
    for (const line of c.toString().split("\n")) if (line.trim()) process.stderr.write(`  [${name}] ${line}\n`);
  });
  return child;
}

const SCRAPE_TIMEOUT_MS = 10_000;

/** A process's /metrics text; a process that has gone says so by name instead of "fetch failed". */
async function scrape(name: string, port: number): Promise<string> {
  try {
    // a deadline: a stopped process accepts the connection (the kernel does) and answers nothing, ever
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(SCRAPE_TIMEOUT_MS) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return await res.text();
  } catch (e) {
    throw new Error(
      `${name}: its metrics at :${port} did not answer (${e instanceof Error ? e.message : String(e)}); did it exit, or is it stuck?`,
    );
  }
}

/**
 * The GPUs a worker started without --gpus sees: CUDA_VISIBLE_DEVICES's entries where that is set, else the lines of
 * `nvidia-smi -L`; 0 without a GPU (or without nvidia-smi).
 */
function visibleGpuCount(env: NodeJS.ProcessEnv = process.env): number {
  if (env.CUDA_VISIBLE_DEVICES !== undefined)
    return env.CUDA_VISIBLE_DEVICES.split(",").filter((v) => v.trim() !== "").length;
  const r = spawnSync("nvidia-smi", ["-L"], { encoding: "utf8", timeout: 10_000 });
  if (r.status !== 0 || typeof r.stdout !== "string") return 0;
  return r.stdout.split("\n").filter((l) => /^GPU \d+:/.test(l)).length;
}

/**
 * Worker i's environment: with --gpus N it sees only GPU i mod N (the CUDA backend uses its first visible GPU), counted
 * within this process's CUDA_VISIBLE_DEVICES where that is set.
 */
export function workerEnv(
  gpus: number | null,
  i: number,
  env: NodeJS.ProcessEnv = process.env,
  visibleGpus = 0,
): NodeJS.ProcessEnv {
  if (gpus === null) {
    // Each worker runs on every GPU this process sees (expert-worker/src/backend/multi-device.ts): two runs in flight
    // per GPU, each waiting for it on one of libuv's threads (4 by default), so with 2 GPUs the runs queued for a
    // thread (DeepSeek-V3 full, 2 GPUs: 3374.7 tokens/s with 4 threads, bench/results/h200-moe.md). The operator
    // gives such pods the same 2 x GPUs + 2; a value the user set stays.
    const devices = Math.min(visibleGpus, Number(env.SWITCHYARD_CUDA_DEVICES) || visibleGpus);
    if (devices < 2 || env.UV_THREADPOOL_SIZE !== undefined) return env;
    return { ...env, UV_THREADPOOL_SIZE: String(2 * devices + 2) };
  }
  const visible = (env.CUDA_VISIBLE_DEVICES ?? "").split(",").filter((v) => v.trim() !== "");
  if (env.CUDA_VISIBLE_DEVICES !== undefined && visible.length === 0)
    throw new Error("--gpus: CUDA_VISIBLE_DEVICES is set and lists no GPU");
  if (visible.length > 0 && gpus > visible.length)
    throw new Error(`--gpus: ${gpus} GPUs asked for, CUDA_VISIBLE_DEVICES lists ${visible.length}`);
  const k = i % gpus;
  return { ...env, CUDA_VISIBLE_DEVICES: visible.length > 0 ? (visible[k] as string).trim() : String(k) };
}

async function waitForWorker(address: string, child: ChildProcess, timeoutMs: number): Promise<ExpertWorkerClient> {
  const client = new ExpertWorkerClient(address, credentials.createInsecure(), CLIENT_CHANNEL_OPTIONS);
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`worker at ${address} exited ${exitHow(child.exitCode, child.signalCode)}`);
    const ok = await new Promise<boolean>((r) =>
      client.status({}, new Metadata(), { deadline: Date.now() + 1000 }, (e) => r(!e)),
    );
    if (ok) return client;
    if (Date.now() > end) throw new Error(`worker at ${address} not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A worker's Status; one that does not answer is named (gRPC's own error says only "Deadline exceeded"). */
function statusOf(id: string, c: ExpertWorkerClient): Promise<WorkerStatus> {
  return new Promise((res, rej) =>
    c.status({}, new Metadata(), { deadline: Date.now() + 3000 }, (e, s) =>
      e ? rej(new Error(`worker ${id}: its Status did not answer (${e.message}); is it stuck?`)) : res(s),
    ),
  );
}

export async function runLocal(o: LocalOptions): Promise<number> {
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const model = localModel(o.family, o.size);
  const want: ModelSpec = defaultSpec(o.family, model);
  const ckptDir = join(ROOT, ".cache", "checkpoints", `${o.family}-${o.size}-seed${o.seed}`);
  const generating = !existsSync(join(ckptDir, "config.json"));
  await mkdir(dirname(ckptDir), { recursive: true });
  // Partial checkpoints of runs stopped while generating hold disk the check below would count as used
  const stale = await removeStaleCheckpointTemps(dirname(ckptDir));
  if (stale.removed.length > 0)
    log(
      `removed ${stale.removed.length} partial checkpoint(s) (${(stale.bytes / 1e9).toFixed(2)} GB) left in ${dirname(ckptDir)} by runs stopped while generating: ${stale.removed.join(", ")}`,
    );
  const disk = await statfs(dirname(ckptDir)).catch(() => null);
  const redundant = o.redundant ?? Math.floor(want.experts / 4);
  // The shared expert's slices are placed like experts, with the load of every token (shared-slices.ts).
  const slices = sharedSlices(want);
  const placeSlices = o.sharedExperts !== "router" ? slices : 0;
  const footprint = runFootprint(want, o.workers > 1 ? redundant : 0, placeSlices > 0);
  const { packed: packedReference } = checkRunFits(`${o.family} --size ${o.size}`, footprint, {
    totalMemory: totalmem(),
    freeDisk: disk ? disk.bavail * disk.bsize : null,
    generating,
  });
  if (generating) {
    const gb = footprint.checkpoint / 1e9;
    log(`generating ${o.family} ${o.size} checkpoint (${gb.toFixed(gb < 1 ? 3 : 1)} GB of experts) in ${ckptDir} ...`);
    // shards of <= ~2 GB (Hugging Face's are a few GB each), written by one thread each on the cores there are:
    // one thread alone would take minutes for DeepSeek-V3's 45 GB
    const shards = Math.max(1, Math.ceil(gb / 2));
    const threads = Math.max(1, Math.min(shards, availableParallelism() - 1));
    // Written beside it and renamed into place whole: another `npm start` generating the same checkpoint at once
    // writes its own (generate.ts generateCheckpointAtomic). Stopped meanwhile, this run removes its part.
    const tmp = checkpointTempDir(ckptDir);
    const onSignal = (signal: NodeJS.Signals) => {
      rmSync(tmp, { recursive: true, force: true });
      process.exit(128 + (osConstants.signals[signal] ?? 15));
    };
    for (const sig of STOP_SIGNALS) process.once(sig, onSignal);
    try {
      const r = await generateCheckpointAtomic(
        { family: o.family, dir: ckptDir, seed: o.seed, shards, threads, ...model },
        tmp,
      );
      if (!r.published) log(`another run generated ${ckptDir} meanwhile: using that one`);
    } finally {
      for (const sig of STOP_SIGNALS) process.off(sig, onSignal);
    }
  } else log(`reusing checkpoint ${ckptDir}`);
  const ckpt = await openCheckpoint(ckptDir);
  const spec = ckpt.spec;
  if (spec.hiddenSize !== want.hiddenSize || spec.experts !== want.experts) {
    await ckpt.close();
    throw new Error(
      `${ckptDir} holds a different model (d=${spec.hiddenSize}, E=${spec.experts}); delete it to regenerate`,
    );
  }
  const layers = moeLayers(spec);
  const d = spec.hiddenSize;

  const runDir = join(ROOT, ".cache", "local", `run-${process.pid}`);
  await mkdir(runDir, { recursive: true });
  const ids = Array.from({ length: o.workers }, (_, i) => `w${i}`);
  const gpus = o.gpus === null ? visibleGpuCount() : 0;
  // worker id -> host:port, filled in as the workers report the ports they bound (readyPorts); the router's config
  // carries them, the plan does not need them
  const endpoints: Record<string, string> = {};
  const workerMetricsPorts: Record<string, number> = {};
  const workerPids: Record<string, number> = {};
  const { plan, stats } = localPlan(spec, ids, redundant, placeSlices);
  const planFile = join(runDir, "plan.json");
  await writeFile(planFile, JSON.stringify(plan));
  log(
    `placement v${plan.version}: ${o.workers} workers, ${stats.slotsPerWorker.join("/")} (layer, expert) copies each, ${stats.replicatedExperts} replicated`,
  );

  const children = new Map<ChildProcess, string>();
  let quiet = false;
  // One SIGTERM per child (cleanup runs at the end and again on exit): a second one tells a worker to stop waiting.
  const signalled = new Set<ChildProcess>();
  const cleanup = () => {
    for (const c of children.keys())
      if (c.exitCode === null && c.signalCode === null && c.pid && !signalled.has(c)) {
        signalled.add(c);
        c.kill("SIGTERM");
        // a stopped child (kill -STOP, a debugger) keeps a SIGTERM pending and would outlive the run, ports and all
        c.kill("SIGCONT");
      }
  };
  process.on("exit", cleanup);
  // Whatever stops the launcher stops its children: Ctrl-C, a SIGTERM (npm forwards its own: the script execs
  // node, so no shell stands between), a closed terminal (SIGHUP). Past process.exit the finally below does not run.
  const onSignal = (signal: NodeJS.Signals) => {
    cleanup();
    rmSync(runDir, { recursive: true, force: true });
    process.exit(128 + (osConstants.signals[signal] ?? 15));
  };
  for (const sig of STOP_SIGNALS) process.once(sig, onSignal);
  try {
    log(`starting ${o.workers} workers and the router ...`);
    const workerClients = await Promise.all(
      ids.map(async (id) => {
        const args = [
          ...DATA_PATH_NODE_FLAGS,
          join(ROOT, "expert-worker/dist/main.js"),
          "--checkpoint",
          ckptDir,
          "--pool",
          "local",
          "--worker-id",
          id,
          "--port",
          "0",
          "--metrics-port",
          "0",
          "--host",
          "127.0.0.1",
          "--plan",
          planFile,
        ];
        if (o.cacheCapacity !== null) args.push("--cache-capacity", String(o.cacheCapacity));
        const child = spawnProc(id, args, children, () => quiet, workerEnv(o.gpus, ids.indexOf(id), process.env, gpus));
        // Listening before the first message arrives: both messages can come in one read of the IPC channel.
        const warmed = warmedMessage(child, `worker ${id}`, WARM_TIMEOUT_MS);
        warmed.catch(() => {}); // awaited below; readyPorts reports an early exit first
        const ports = await readyPorts(child, `worker ${id}`, 60_000);
        await warmed;
        endpoints[id] = `127.0.0.1:${ports.port}`;
        workerMetricsPorts[id] = ports.metricsPort;
        workerPids[id] = child.pid ?? -1;
        return waitForWorker(endpoints[id], child, 60_000);
      }),
    );
    const configFile = join(runDir, "router.json");
    await writeFile(
      configFile,
      JSON.stringify(
        { pools: [{ name: "local", checkpoint: ckptDir, planFile, endpoints, policy: o.policy }] },
        null,
        2,
      ),
    );
    // One router, or --routers N replicas of it over the same workers (each batches its own share of the sequences)
    const routerNames = o.routers === 1 ? ["router"] : Array.from({ length: o.routers }, (_, i) => `router${i}`);
    const routers = await Promise.all(
      routerNames.map(async (name) => {
        const child = spawnProc(
          name,
          [
            ...DATA_PATH_NODE_FLAGS,
            join(ROOT, "router-service/dist/main.js"),
            "--config",
            configFile,
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--data-port",
            o.engineTransport === "data" ? "0" : "-1",
            "--host",
            "127.0.0.1",
          ],
          children,
          () => quiet,
        );
        const ports = await readyPorts(child, name, 60_000);
        return { name, pid: child.pid ?? -1, ...ports };
      }),
    );
    quiet = true;
    // A worker or router that exits from here on is named in the result: the drivers see only failed requests, and
    // the counters scraped from it below would not answer.
    const died: string[] = [];
    for (const [c, name] of children)
      c.once("exit", (code, signal) => {
        if (signalled.has(c)) return;
        const line = `${name} exited ${signal ? `on ${signal}` : `with code ${code}`} during the run`;
        died.push(line);
        log(line);
      });

    // Reference threads.
    const verifyMode: VerifyMode = o.verify ?? (o.size === "full" ? "sample" : "all");
    const threads =
      o.verifyThreads ?? (verifyMode === "all" ? 1 : Math.max(1, Math.min(8, availableParallelism() - 2 - o.workers)));
    log(
      `loading the reference weights (${(referenceBytes(spec, packedReference) / 1e9).toFixed(2)} GB ${packedReference ? "packed in 16 bits: fp32 would not fit beside the workers" : "in fp32"}) for ${threads} reference thread(s), checking ${verifyMode === "all" ? "every answer" : "a sample of the answers"} ...`,
    );
    const refLayers = await readSharedLayers(ckpt, packedReference);
    await ckpt.close();
    const tolerance = o.tolerance ?? (o.dtype === "bf16" ? 1e-2 : 1e-4);
    let wrong = 0;
    let worstErr = 0;
    const firstWrong: string[] = [];
    const verifier = await VerifierPool.start(
      threads,
      verifyMode,
      {
        init: { topK: o.policy.gating.topK, topP: o.policy.gating.topP, maxK: o.policy.gating.maxK },
        spec,
        layers: refLayers,
      },
      (r: VerifyResult) => {
        if (r.relErr > worstErr || Number.isNaN(r.relErr)) worstErr = Number.isNaN(r.relErr) ? Number.NaN : r.relErr;
        if (!(r.relErr <= tolerance)) {
          wrong++;
          if (firstWrong.length < 5)
            firstWrong.push(
              `answer #${r.id}: ${r.detail ?? `relative error ${r.relErr.toExponential(2)} > ${tolerance}`}`,
            );
        }
      },
    );

    // Load.
    const dtype = o.dtype === "bf16" ? DType.BFLOAT16 : DType.FLOAT32;
    let jobId = 0;
    // CPU time of each process over the load: which one the run is bound by
    const cpuPids: [string, number, boolean][] = [
      ["driver (JavaScript thread)", process.pid, true],
      ["driver (all threads, incl. reference)", process.pid, false],
      ...routers.map((r): [string, number, boolean] => [r.name, r.pid, false]),
      ...ids.map((id): [string, number, boolean] => [id, workerPids[id], false]),
    ];
    const cpuAt = () => Promise.all(cpuPids.map(([, pid, main]) => cpuSeconds(pid, main)));
    // and per thread name, for the router and the workers: their cores beyond the JavaScript thread
    const threadPids: [string, number][] = [
      ...routers.map((r): [string, number] => [r.name, r.pid]),
      ...ids.map((id): [string, number] => [id, workerPids[id]]),
    ];
    const threadsAt = () => Promise.all(threadPids.map(([, pid]) => cpuByThread(pid)));
    /** Every worker's /metrics, parsed, as one list of samples. */
    const workerSamples = async () =>
      (await Promise.all(ids.map(async (id) => parsePromText(await scrape(id, workerMetricsPorts[id]))))).flat();
    const total = (rows: { name: string; value: number }[], name: string) =>
      rows.filter((r) => r.name === name).reduce((a, r) => a + r.value, 0);
    const GPU_SECONDS = "switchyard_worker_device_compute_duration_seconds_sum";
    // The workers' GPU time so far (warm-up), so the run's GPU busy share counts the load only.
    const [cpu0, threads0, gpu0] = await Promise.all([
      cpuAt(),
      threadsAt(),
      workerSamples().then((rows) => total(rows, GPU_SECONDS)),
    ]);
    const t0 = performance.now();
    log(
      `driving load: ${o.concurrency} sequences x ${layers.length} MoE layers, ${o.durationS} s, ${o.dtype} (${o.family} ${o.size}, d=${d}, ${spec.experts} experts, top-${o.policy.gating.topK ?? spec.topK})${o.drivers > 1 ? ` from ${o.drivers} driver threads` : ""}${o.engineBatch > 1 ? `, ${o.engineBatch} sequences a Forward` : ""}, to the router by ${o.engineTransport === "data" ? "its TCP data path" : "gRPC ForwardStreams"}`,
    );
    const run = startDrivers(
      o.drivers,
      {
        routerAddresses: routers.map((r) => `127.0.0.1:${r.port}`),
        ...(o.engineTransport === "data" ? { routerDataAddresses: routers.map((r) => `127.0.0.1:${r.dataPort}`) } : {}),
        layers,
        hidden: d,
        dtype,
        prefill: o.prefill,
        traffic: { ...DEFAULT_TRAFFIC, hidden: d, seed: o.seed },
        endAtEpochMs: Date.now() + o.durationS * 1000,
        requestTimeoutMs: Math.round(o.requestTimeoutS * 1000),
        routerNames: routers.map((r) => r.name),
        ...(o.gate === "engine" ? { engineGate: ckptDir } : {}),
        engineBatch: o.engineBatch,
      },
      o.concurrency,
      { accepting: () => verifier.accepting, offer: (job) => verifier.offer({ id: ++jobId, ...job }) },
    );
    const progress = setInterval(
      () => {
        const s = (performance.now() - t0) / 1000;
        const n = run.live();
        const line = `  ${s.toFixed(0).padStart(3)} s  ${(n.tokensDone / s).toFixed(0).padStart(6)} tok/s  ${n.forwards} forwards  p50 ${quantile(n.recent, 0.5).toFixed(2)} ms  verified ${verifier.checked}  wrong ${wrong}  errors ${n.errors}`;
        if (process.stderr.isTTY) process.stderr.write(`\r${line}   `);
        else process.stderr.write(`${line}\n`);
      },
      process.stderr.isTTY ? 500 : 5000,
    );

    // Every request has a deadline (drive.ts), so the drivers end by the load's end plus one of them; a driver that
    // does not (a thread stuck) must not hold the run: past that and a grace, it ends, failed, with what it counted.
    const graceMs = o.requestTimeoutS * 1000 + CLIENT_GRACE_MS + 10_000;
    let watchdog: NodeJS.Timeout | undefined;
    const stuck = new Promise<null>((res) => {
      watchdog = setTimeout(() => res(null), o.durationS * 1000 + graceMs);
    });
    const driven = await Promise.race([run.done, stuck]).finally(() => clearTimeout(watchdog));
    if (driven === null) {
      clearInterval(progress);
      const n = run.live();
      console.log(
        `\nFAILED: the load did not end within ${(graceMs / 1000).toFixed(0)} s of its end (a driver is stuck); ${n.forwards} forwards, ${n.errors} errors, ${wrong} wrong of ${verifier.checked} answers verified so far`,
      );
      void verifier.close().catch(() => {});
      for (const c of workerClients) c.close();
      return 1;
    }
    const { tokensDone, forwards, errors, errorSamples, latencies, routerMs, unverifiable, unchecked } = addStats(
      new DriveStats(),
      ...driven,
    );
    const wall = (performance.now() - t0) / 1000;
    const [cpu1, threads1] = await Promise.all([cpuAt(), threadsAt()]);
    clearInterval(progress);
    if (process.stderr.isTTY) process.stderr.write("\n");
    log(`load done; verifying the remaining ${verifier.pending} answers ...`);
    await verifier.drain();
    await verifier.close();
    const verified = verifier.checked;
    if (died.length > 0) {
      for (const c of workerClients) c.close();
      for (const s of errorSamples) log(`error: ${s}`);
      for (const s of firstWrong) log(`WRONG ${s}`);
      console.log(`\nFAILED: ${died.join("; ")}; ${errors} errors, ${wrong} wrong of ${verified} answers verified`);
      return 1;
    }

    // What follows asks the router and the workers for their counters: one that is stuck (the likely cause of the
    // errors above) fails the run naming it, after the errors the load saw
    try {
      // Counters from the router and the workers.
      const rows = (
        await Promise.all(routers.map(async (r) => parsePromText(await scrape(r.name, r.metricsPort))))
      ).flat();
      const sum = (name: string) => rows.filter((r) => r.name === name).reduce((a, r) => a + r.value, 0);
      const perWorker = ids.map((id) =>
        rows
          .filter((r) => r.name === "switchyard_router_worker_tokens_total" && r.labels.worker === id)
          .reduce((a, r) => a + r.value, 0),
      );
      const meanLoad = perWorker.reduce((a, b) => a + b, 0) / perWorker.length;
      const statuses = await Promise.all(workerClients.map((c, i) => statusOf(ids[i] as string, c)));
      const workerRows = await workerSamples();
      const wsum = (name: string) => total(workerRows, name);
      /** A histogram's mean in milliseconds over every series of it ("-" before its first observation). */
      const meanMs = (total: (name: string) => number, histogram: string) => {
        const n = total(`${histogram}_count`);
        return n > 0 ? ((1000 * total(`${histogram}_sum`)) / n).toFixed(2) : "-";
      };
      const pct = (part: number, whole: number) => (whole > 0 ? `${((100 * part) / whole).toFixed(0)}%` : "-");
      const workerBatches = wsum("switchyard_worker_batch_tokens_count");
      // CUDA workers time each batch on the GPU too (events on the compute stream): "computing" less that is the
      // batch's wait behind another on the GPU and the host's part of the run.
      // The GPU busy share: the batches' GPU time over the load's wall time, per worker (two batches in flight do not
      // overlap in it: a batch's time starts when the stream reaches it).
      const gpuBusy = (wsum(GPU_SECONDS) - gpu0) / (wall * ids.length);
      const gpuPart =
        wsum("switchyard_worker_device_compute_duration_seconds_count") > 0
          ? `, ${meanMs(wsum, "switchyard_worker_device_compute_duration_seconds")} of it on the GPU (GPU busy ${(100 * gpuBusy).toFixed(0)}% of the run)`
          : "";
      const cpuLine = cpuPids
        .map(([name], i) => {
          const a = cpu0[i];
          const b = cpu1[i];
          return `${name} ${a === null || b === null ? "?" : ((b - a) / wall).toFixed(2)}`;
        })
        .join(", ");
      const hits = statuses.reduce((a, s) => a + Number(s.cacheHits), 0);
      const misses = statuses.reduce((a, s) => a + Number(s.cacheMisses), 0);
      const tpe =
        sum("switchyard_router_tokens_per_expert_call_sum") /
        Math.max(1, sum("switchyard_router_tokens_per_expert_call_count"));
      const batchTok =
        sum("switchyard_router_batch_tokens_sum") / Math.max(1, sum("switchyard_router_batch_tokens_count"));
      const table: [string, string][] = [
        [
          "model",
          `${o.family} ${o.size} (${spec.layers} layers, d=${d}, ${spec.experts} experts, top-${o.policy.gating.topK ?? spec.topK}${spec.sharedExperts ? ", shared expert" : ""})`,
        ],
        [
          "workers / concurrency",
          `${o.workers} / ${o.concurrency} sequences, ${o.dtype}${o.routers > 1 ? `, ${o.routers} routers` : ""}${o.drivers > 1 ? `, ${o.drivers} driver threads` : ""}${o.engineBatch > 1 ? `, ${o.engineBatch} sequences a Forward` : ""}`,
        ],
        ...(spec.sharedExperts > 0
          ? ([
              [
                "shared expert",
                placeSlices > 0
                  ? `on the workers: ${placeSlices} slice(s) of width ${spec.intermediateSize}, every token`
                  : "in the router",
              ],
            ] as [string, string][])
          : []),
        [
          "router logits",
          o.gate === "engine"
            ? "from the engine: the drivers compute them and send router_logits"
            : "computed by the router from the hidden states",
        ],
        [
          "engine -> router transport",
          (() => {
            // what the routers counted, by method: ForwardData on the data path, ForwardStream on gRPC
            const by = (m: string) =>
              rows
                .filter((r) => r.name === "switchyard_router_requests_total" && r.labels.method === m)
                .reduce((a, r) => a + r.value, 0);
            const [data, stream] = [by("ForwardData"), by("ForwardStream")];
            return `${o.engineTransport === "data" ? "TCP data path" : "gRPC ForwardStreams"} (the routers counted ${data} requests on the data path, ${stream} on gRPC streams)`;
          })(),
        ],
        [
          "router -> worker transport",
          `TCP data path to ${sum("switchyard_router_worker_data_path")} of ${ids.length * routers.length} ${routers.length > 1 ? "router-worker pairs" : "workers"} at the end, gRPC stream to the rest`,
        ],
        [
          "batching",
          o.policy.batching.enabled
            ? `on (maxBatchTokens ${o.policy.batching.maxBatchTokens}, maxWait ${o.policy.batching.maxWaitMs} ms, ${o.policy.batching.flushesInFlight} flush(es) in flight)`
            : "off",
        ],
        [
          "tokens/s",
          `${(tokensDone / wall).toFixed(1)} (${tokensDone} tokens x ${layers.length} MoE layers in ${wall.toFixed(1)} s)`,
        ],
        ["forwards/s", (forwards / wall).toFixed(1)],
        [
          "latency per forward p50 / p99",
          `${quantile(latencies, 0.5).toFixed(2)} ms / ${quantile(latencies, 0.99).toFixed(2)} ms`,
        ],
        [
          "of which in the router p50 / p99",
          `${quantile(routerMs, 0.5).toFixed(2)} ms / ${quantile(routerMs, 0.99).toFixed(2)} ms (arrival to reply)`,
        ],
        ["tokens per flush (mean)", batchTok.toFixed(1)],
        // Where a forward's time in the router goes (means): what bounds a run shows here before any profile.
        [
          "router time (means)",
          `${meanMs(sum, "switchyard_router_queue_wait_seconds")} ms queued for a flush, ${meanMs(sum, "switchyard_router_gate_duration_seconds")} ms gating a flush (${pct(sum("switchyard_router_gate_ahead_tokens_total"), sum("switchyard_router_tokens_total"))} of the tokens gated ahead, while queued), ${meanMs(sum, "switchyard_router_dispatch_duration_seconds")} ms per worker batch round trip`,
        ],
        [
          "worker batches",
          workerBatches > 0
            ? `${(wsum("switchyard_worker_batch_tokens_sum") / workerBatches).toFixed(1)} rows each, ${meanMs(wsum, "switchyard_worker_run_duration_seconds")} ms from arrival to result: ${meanMs(wsum, "switchyard_worker_queue_wait_seconds")} ms queued, ${meanMs(wsum, "switchyard_worker_compute_duration_seconds")} ms computing${gpuPart} (means of ${workerBatches}${wsum("switchyard_worker_merged_batches_total") > 0 ? `; ${pct(wsum("switchyard_worker_merged_batches_total"), workerBatches)} of them shared a GPU run with other queued batches` : ""})`
            : "none",
        ],
        ["CPU during the load (cores)", cpuLine],
        ...threadPids.map(([name], i): [string, string] => [
          `  ${name} by thread`,
          threadCpuLine(threads0[i], threads1[i], wall),
        ]),
        ["tokens per expert call (mean)", tpe.toFixed(2)],
        [
          "cache hit ratio",
          hits + misses > 0
            ? `${((100 * hits) / (hits + misses)).toFixed(1)}% (${hits} hits, ${misses} misses)`
            : "n/a",
        ],
        [
          "worker load max/mean",
          `${meanLoad > 0 ? (Math.max(...perWorker) / meanLoad).toFixed(3) : "n/a"} (rows ${perWorker.join(" / ")})`,
        ],
        ["dropped assignments", String(sum("switchyard_router_dropped_assignments_total"))],
        ["errors", String(errors)],
        [
          "answers verified / wrong",
          `${verified} / ${wrong} (worst relative error ${worstErr.toExponential(2)}, tolerance ${tolerance}${unverifiable ? `; ${unverifiable} with drops not compared` : ""}${unchecked ? `; sampled: ${unchecked} answers came while all ${threads} reference threads were busy and were not checked` : ""})`,
        ],
      ];
      const w0 = Math.max(...table.map((r) => r[0].length));
      console.log("");
      for (const [k, v] of table) console.log(`${k.padEnd(w0)}  ${v}`);
      for (const s of errorSamples) log(`error: ${s}`);
      for (const s of firstWrong) log(`WRONG ${s}`);
      for (const c of workerClients) c.close();
      // The check a deployment runs with `helm test` (smoke/), on this run's first router: it exercises that path on
      // every `npm start`, the CUDA worker's on the H200 included.
      const r0 = routers[0];
      console.log(`\nsmoke check (npm run smoke; helm test) on ${r0.name}:`);
      const smoke = await runSmoke(
        {
          router: `127.0.0.1:${r0.port}`,
          http: `http://127.0.0.1:${r0.metricsPort}`,
          dataPort: r0.dataPort ?? 0,
          pools: [],
          tokens: 4,
          timeoutMs: 30_000,
        },
        (l) => console.log(`  ${l}`),
      );
      const v = verdict({ forwards, verified, wrong, errors, unverifiable, unchecked, smokeOk: smoke.ok });
      console.log(`\n${v.line}`);
      const ok = v.ok;
      return ok ? 0 : 1;
    } catch (e) {
      if (!(e instanceof Error) || e.constructor !== Error) throw e; // a bug: main prints its stack
      for (const s of errorSamples) log(`error: ${s}`);
      for (const s of firstWrong) log(`WRONG ${s}`);
      for (const c of workerClients) c.close();
      console.log(`\nFAILED: ${e.message}; ${errors} errors, ${wrong} wrong of ${verified} answers verified`);
      return 1;
    }
  } finally {
    cleanup();
    // a child that ignores its SIGTERM (its event loop stuck) would outlive the launcher with its ports and memory
    const left = [...children.keys()].filter((c) => c.exitCode === null && c.signalCode === null);
    await Promise.all(
      left.map(
        (c) =>
          new Promise<void>((res) => {
            const t = setTimeout(() => {
              log(`${children.get(c)} did not stop within ${CHILD_STOP_MS / 1000} s of its SIGTERM: killed`);
              c.kill("SIGKILL");
              res();
            }, CHILD_STOP_MS);
            c.once("exit", () => {
              clearTimeout(t);
              res();
            });
          }),
      ),
    );
    await rm(runDir, { recursive: true, force: true }); // this run's plan and router config
  }
}

/** How long the launcher waits for a child to stop on SIGTERM (a worker gives up on its batches after 10 s). */
const CHILD_STOP_MS = 15_000;

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  let opts: LocalOptions;
  try {
    opts = parseLocalArgs(argv.filter((a) => a !== "--"));
    await loadPolicyFile(opts);
  } catch (e) {
    console.error((e as Error).message);
    process.exit(argv.includes("--help") || argv.includes("-h") ? 0 : 2);
  }
  runLocal(opts).then(
    (code) => process.exit(code),
    (e) => {
      // The launcher's own errors (and a child's, a gRPC call's) are sentences for the user; another kind, a
      // TypeError say, is a bug, and its stack helps
      const own = e instanceof WontFitError || (e instanceof Error && e.constructor === Error);
      console.error(`local: ${own ? e.message : ((e as Error).stack ?? e)}`);
      process.exit(1);
    },
  );
}
