// Worker command line (docs/CONTRACTS.md): every flag also as env SWITCHYARD_<FLAG_UPPER_SNAKE>; flags win.
//   --checkpoint DIR --pool NAME --worker-id ID --port 50061 --metrics-port 9401
//   [--metrics-pool NAME] [--experts SPEC] [--plan FILE] [--cache-capacity N] [--host-cache-capacity N]
//   [--backend auto|cpu|cuda] [--queue-capacity N] [--cache-policy lru|lfu] [--max-message-bytes N] [--max-rows N] [--host ADDR] [--data-port N] [--warm true|false]
// Pure: parses argv + env into WorkerOptions or throws an Error naming the flag; startFailure says how main.ts
// reports an error that stops the worker starting.

import type { PlacementPlan } from "@switchyard/moe";
import { isSwitchyardError } from "@switchyard/protocol";
import type { BackendChoice } from "./backend/select.js";

export interface WorkerFlags {
  checkpoint: string;
  pool: string;
  /**
   * The `pool` label of this worker's metrics: the name the router serves the pool under, so that one label value
   * selects a pool's router and worker series. The operator passes `namespace/name` for a pool outside the router's
   * namespace (its router config key); unset = --pool.
   */
  metricsPool: string;
  workerId: string;
  port: number;
  metricsPort: number;
  /** TCP data path (packages/protocol/src/data-path.ts): 0 = any free port, -1 = off. */
  dataPort: number;
  host: string;
  experts?: string;
  plan?: string;
  /** Experts the compute tier holds: the GPU slots on CUDA, the host cache on CPU (its only tier). See worker.ts cacheTiers. */
  cacheCapacity?: number;
  /** Experts the host tier holds (>= cacheCapacity); unset = every served expert. See worker.ts cacheTiers. */
  hostCacheCapacity?: number;
  cachePolicy: string;
  backend: BackendChoice;
  queueCapacity: number;
  maxMessageBytes: number;
  /** Rows a batch may hold (its assignment rows, and its distinct tokens); unset = no limit beyond the message size. */
  maxRows?: number;
  /** Load the served experts before reporting ready (worker.ts). */
  warm: boolean;
}

const FLAGS = [
  "checkpoint",
  "pool",
  "metrics-pool",
  "worker-id",
  "port",
  "metrics-port",
  "data-port",
  "host",
  "experts",
  "plan",
  "cache-capacity",
  "host-cache-capacity",
  "cache-policy",
  "backend",
  "queue-capacity",
  "max-message-bytes",
  "max-rows",
  "warm",
] as const;
type Flag = (typeof FLAGS)[number];

const MAX_PORT = 65535;

export const envName = (flag: string): string => `SWITCHYARD_${flag.replace(/-/g, "_").toUpperCase()}`;

export function parseWorkerArgs(argv: string[], env: NodeJS.ProcessEnv = {}): WorkerFlags {
  const raw = new Map<Flag, string>();
  for (const f of FLAGS) {
    const v = env[envName(f)];
    if (v !== undefined && v !== "") raw.set(f, v);
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument "${a}"`);
    const eq = a.indexOf("=");
    const name = (eq > 0 ? a.slice(2, eq) : a.slice(2)) as Flag;
    if (!FLAGS.includes(name))
      throw new Error(`unknown flag --${name} (known: ${FLAGS.map((f) => `--${f}`).join(" ")})`);
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new Error(`--${name}: missing value`);
    raw.set(name, value);
  }
  const str = (f: Flag, def?: string): string => {
    const v = raw.get(f) ?? def;
    if (v === undefined) throw new Error(`--${f} is required (or env ${envName(f)})`);
    return v;
  };
  // Digits only: Number() reads "" and " " as 0 (`--port=` would bind a random port, `--queue-capacity=` turn
  // the queue off) and accepts "0x10" or "1e3".
  const integer = (v: string): number => (/^-?\d+$/.test(v) ? Number(v) : Number.NaN);
  const int = (f: Flag, def: number | undefined, min: number): number | undefined => {
    const v = raw.get(f);
    if (v === undefined) return def;
    const n = integer(v);
    if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${f}: expected an integer >= ${min}, got "${v}"`);
    return n;
  };
  // Checked here: a port beyond 65535 would fail only at bind, with a RangeError's stack. `off` = -1 turns it off.
  const port = (f: Flag, def: number, off = false): number => {
    const v = raw.get(f);
    if (v === undefined) return def;
    const n = integer(v);
    if (!Number.isSafeInteger(n) || n < (off ? -1 : 0) || n > MAX_PORT)
      throw new Error(`--${f}: expected a port 0-${MAX_PORT}${off ? " or -1 (off)" : ""}, got "${v}"`);
    return n;
  };
  const backend = str("backend", "auto");
  if (backend !== "auto" && backend !== "cpu" && backend !== "cuda")
    throw new Error(`--backend: expected auto, cpu or cuda, got "${backend}"`);
  const policy = str("cache-policy", "lru");
  if (policy !== "lru" && policy !== "lfu") throw new Error(`--cache-policy: expected lru or lfu, got "${policy}"`);
  const warm = str("warm", "true");
  if (warm !== "true" && warm !== "false") throw new Error(`--warm: expected true or false, got "${warm}"`);
  const pool = str("pool");
  const metricsPool = str("metrics-pool", pool);
  // Prometheus label values may hold any UTF-8; the check keeps a typo (an empty or padded name) from splitting a
  // pool's series in two.
  if (metricsPool.trim() !== metricsPool || metricsPool === "")
    throw new Error(`--metrics-pool: expected a pool name without surrounding spaces, got "${metricsPool}"`);
  const cacheCapacity = int("cache-capacity", undefined, 1);
  const hostCacheCapacity = int("host-cache-capacity", undefined, 1);
  checkCacheTiers(cacheCapacity, hostCacheCapacity);
  return {
    checkpoint: str("checkpoint"),
    pool,
    metricsPool,
    workerId: str("worker-id"),
    port: port("port", 50061),
    metricsPort: port("metrics-port", 9401),
    dataPort: port("data-port", 0, true),
    host: str("host", "0.0.0.0"),
    experts: raw.get("experts"),
    plan: raw.get("plan"),
    cacheCapacity,
    hostCacheCapacity,
    cachePolicy: policy,
    backend,
    queueCapacity: int("queue-capacity", 64, 0) as number,
    maxMessageBytes: int("max-message-bytes", 256 * 1024 * 1024, 1024) as number,
    maxRows: int("max-rows", undefined, 1),
    warm: warm === "true",
  };
}

/** The host tier sits behind the compute tier: it holds at least as many experts (else it would drop what runs). */
export function checkCacheTiers(cacheCapacity: number | undefined, hostCacheCapacity: number | undefined): void {
  if (cacheCapacity !== undefined && hostCacheCapacity !== undefined && hostCacheCapacity < cacheCapacity)
    throw new Error(
      `--host-cache-capacity: ${hostCacheCapacity} is less than --cache-capacity ${cacheCapacity}; the host tier holds at least the experts the GPU slots do`,
    );
}

/**
 * --experts SPEC: which experts this worker serves, as comma-separated items, each `E`, `A-B` (every MoE layer)
 * or `L:E`, `L:A-B`, `L:*` (one layer). Returns keys "layer:expert".
 */
export function parseExpertSpec(spec: string, layers: number[], experts: number): Set<string> {
  const out = new Set<string>();
  const range = (s: string, what: string): [number, number] => {
    if (s === "*") return [0, experts - 1];
    const m = /^(\d+)(?:-(\d+))?$/.exec(s);
    if (!m) throw new Error(`--experts: bad ${what} "${s}" in "${spec}"`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a > b || b >= experts) throw new Error(`--experts: ${what} "${s}" out of range (experts 0-${experts - 1})`);
    return [a, b];
  };
  for (const item of spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const colon = item.indexOf(":");
    let ls = layers;
    let er = item;
    if (colon >= 0) {
      const lt = item.slice(0, colon).trim();
      // digits only: Number("") is 0, so ":3" would read as layer 0
      const l = /^\d+$/.test(lt) ? Number(lt) : Number.NaN;
      if (!layers.includes(l)) throw new Error(`--experts: "${item}": layer "${lt}" is not an MoE layer of the model`);
      ls = [l];
      er = item.slice(colon + 1);
    }
    const [a, b] = range(er, "expert range");
    for (const l of ls) for (let e = a; e <= b; e++) out.add(`${l}:${e}`);
  }
  return out;
}

/** The keys a placement plan assigns to `workerId` (an unknown worker serves nothing). */
export function servedFromPlan(plan: PlacementPlan, workerId: string, pool: string): Set<string> {
  if (plan.pool !== pool) throw new Error(`--plan: plan is for pool "${plan.pool}", this worker serves "${pool}"`);
  const idx = plan.workers.indexOf(workerId);
  const out = new Set<string>();
  if (idx < 0) return out;
  for (let l = 0; l < plan.replicas.length; l++)
    for (let e = 0; e < plan.replicas[l].length; e++) if (plan.replicas[l][e].includes(idx)) out.add(`${l}:${e}`);
  return out;
}

/**
 * How main.ts reports an error that stops the worker starting: one line, and the exit status.
 * - An error about a flag's value exits 2: its message begins with the flag (`--plan FILE: ...`), whether parsing
 *   found it or starting did, once the checkpoint was open (--experts or --plan beyond the model, --backend cuda
 *   with no device: worker.ts and backend/select.ts throw these too).
 * - Other errors a user can act on exit 1 with their message: a SwitchyardError (a checkpoint that is missing or
 *   malformed) or a system call's (the metrics or data port in use).
 * - Anything else exits 1 with its stack (grpc-js's "No address added" for a gRPC port in use is one of these).
 */
export function startFailure(err: unknown): { line: string; status: 1 | 2 } {
  if (!(err instanceof Error)) return { line: String(err), status: 1 };
  if (NAMES_A_FLAG.test(err.message)) return { line: err.message, status: 2 };
  if (isSwitchyardError(err) || typeof (err as NodeJS.ErrnoException).syscall === "string")
    return { line: err.message, status: 1 };
  return { line: err.stack ?? err.message, status: 1 };
}

const NAMES_A_FLAG = new RegExp(`^--(?:${FLAGS.join("|")})[ :]`);
