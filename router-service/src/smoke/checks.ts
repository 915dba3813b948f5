// The router smoke check's pure parts: its arguments, the request it sends each pool, and what it requires of the
// reply. The I/O (health, /pools, the calls) is in smoke.ts; the chart's `helm test` hook runs main.ts.

import { mulberry32 } from "@switchyard/moe";
import {
  DType,
  decodeTensor,
  encodeTensor,
  errorCodeOfGrpcStatus,
  type ForwardRequest,
  type ForwardResponse,
} from "@switchyard/protocol";
import type { PoolSummary, UnloadedPool } from "../router.js";

export interface SmokeArgs {
  /** The router's gRPC address, host:port. */
  router: string;
  /** Base URL of the router's HTTP port (/readyz, /pools), e.g. http://switchyard-router:9400. */
  http: string;
  /** The router's TCP data path on the same host (0: not checked). */
  dataPort: number;
  /** Only these pools (empty: every pool the router serves). */
  pools: string[];
  tokens: number;
  timeoutMs: number;
}

export const SMOKE_USAGE =
  "usage: smoke --router HOST:PORT --http URL [--data-port PORT] [--pool NAME]... [--tokens N] [--timeout-ms MS]";

/** Parses the command line; throws an Error naming the flag at fault. */
export function parseSmokeArgs(argv: readonly string[]): SmokeArgs {
  const out: SmokeArgs = { router: "", http: "", dataPort: 0, pools: [], tokens: 4, timeoutMs: 20_000 };
  const int = (flag: string, v: string, min: number, max: number): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max)
      throw new Error(`${flag}: expected an integer in [${min}, ${max}], got "${v}"`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const v = argv[i + 1];
    if (v === undefined || v.startsWith("--")) throw new Error(`${flag}: missing value`);
    i++;
    switch (flag) {
      case "--router":
        if (!/^[^\s:]+:\d+$/.test(v)) throw new Error(`--router: expected host:port, got "${v}"`);
        out.router = v;
        break;
      case "--http": {
        let url: URL;
        try {
          url = new URL(v);
        } catch {
          throw new Error(`--http: not a URL: "${v}"`);
        }
        if (url.protocol !== "http:" && url.protocol !== "https:")
          throw new Error(`--http: expected http(s)://, got "${v}"`);
        out.http = v.replace(/\/+$/, "");
        break;
      }
      case "--data-port":
        out.dataPort = int(flag, v, 0, 65535);
        break;
      case "--pool":
        out.pools.push(v);
        break;
      case "--tokens":
        out.tokens = int(flag, v, 1, 4096);
        break;
      case "--timeout-ms":
        out.timeoutMs = int(flag, v, 1, 600_000);
        break;
      default:
        throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!out.router) throw new Error("--router: required");
  if (!out.http) throw new Error("--http: required");
  return out;
}

/**
 * The config's pools the router could not load (GET /pools `unloaded`) that this check covers: every one, or the
 * named ones. One line each, with the router's reason.
 */
export function unloadedProblems(unloaded: readonly UnloadedPool[], names: readonly string[]): string[] {
  return unloaded
    .filter((u) => names.length === 0 || names.includes(u.name))
    .map((u) => `pool ${u.name}: configured but not loaded by the router: ${u.error}`);
}

/**
 * The pools to check: the named ones (every one must be served, except those in `unloaded`, which
 * unloadedProblems reports) or all; throws naming what is missing.
 */
export function pickPools(
  served: readonly PoolSummary[],
  names: readonly string[],
  unloaded: readonly UnloadedPool[] = [],
): PoolSummary[] {
  if (served.length === 0)
    throw new Error("the router serves no pools (is an ExpertPool with a RoutingPolicy applied?)");
  if (names.length === 0) return [...served];
  return names
    .filter((n) => !unloaded.some((u) => u.name === n))
    .map((n) => {
      const p = served.find((s) => s.name === n);
      if (!p)
        throw new Error(`pool ${JSON.stringify(n)} is not served (serving: ${served.map((s) => s.name).join(", ")})`);
      return p;
    });
}

/**
 * One request for `pool`: `tokens` rows of N(0, 1) hidden states in bf16 at its first MoE layer, no gate input (the
 * router computes the gate from the checkpoint, as for engines that send hidden states only), and a timeout.
 */
export function smokeRequest(pool: PoolSummary, tokens: number, timeoutMs: number, seed = 1): ForwardRequest {
  const layer = pool.moeLayers[0];
  if (layer === undefined) throw new Error(`pool ${pool.name}: its model has no MoE layer`);
  const rand = mulberry32(seed); // the same hidden states for the same seed: a failure can be replayed
  const h = new Float32Array(tokens * pool.hiddenSize);
  for (let i = 0; i < h.length; i += 2) {
    // Box-Muller: two normals per pair of uniforms (1 - u keeps the log finite)
    const r = Math.sqrt(-2 * Math.log(1 - rand()));
    const th = 2 * Math.PI * rand();
    h[i] = r * Math.cos(th);
    if (i + 1 < h.length) h[i + 1] = r * Math.sin(th);
  }
  return {
    pool: pool.name,
    layer,
    hidden: encodeTensor(h, [tokens, pool.hiddenSize], DType.BFLOAT16),
    gate: undefined,
    requestId: BigInt(seed),
    timeoutMs,
  };
}

/** What is wrong with a reply to smokeRequest(pool, ...): an empty list when nothing is. */
export function replyProblems(pool: PoolSummary, req: ForwardRequest, res: ForwardResponse): string[] {
  if (res.error) return [`the router answered ${errorCodeOfGrpcStatus(res.error.code)}: ${res.error.message}`];
  const tokens = req.hidden?.shape[0] ?? 0;
  const problems: string[] = [];
  let values: Float32Array | null = null;
  try {
    const t = decodeTensor(res.hidden, "hidden", { dtype: DType.BFLOAT16, shape: [tokens, pool.hiddenSize] });
    values = t.values as Float32Array;
  } catch (e) {
    problems.push(`reply ${(e as Error).message}`);
  }
  if (values) {
    let bad = 0;
    let zero = 0;
    for (const x of values) {
      if (!Number.isFinite(x)) bad++;
      else if (x === 0) zero++;
    }
    if (bad) problems.push(`reply hidden: ${bad} of ${values.length} values are not finite`);
    else if (zero === values.length) problems.push("reply hidden: every value is 0 (no expert contributed)");
  }
  const s = res.stats;
  if (!s) problems.push("reply stats: missing");
  else {
    if (s.expertsTouched === 0) problems.push("reply stats.experts_touched: 0 (no expert ran)");
    if (s.workersUsed === 0) problems.push("reply stats.workers_used: 0 (no worker answered)");
  }
  return problems;
}

/** Workers of the pool whose last call failed (the router backs off from them), as lines naming each. */
export function unhealthyWorkers(pool: PoolSummary): string[] {
  return pool.workers
    .filter((w) => !w.healthy)
    .map((w) => `worker ${w.id} (${w.address}): not answering the router (in backoff after a failed call)`);
}
