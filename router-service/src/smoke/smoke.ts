// The router smoke check: is the router ready and healthy, and does every pool answer a Forward through its workers,
// over gRPC and (when asked) the engines' TCP data path? What `helm test` runs (charts/switchyard/templates/tests),
// and what an operator can run against any router. Each check prints one line as it finishes, none waits longer than
// --timeout-ms; the result says whether all passed.

import { credentials, Metadata, makeGenericClientConstructor } from "@grpc/grpc-js";
import {
  type ForwardRequest,
  type ForwardResponse,
  fromGrpcError,
  isSwitchyardError,
  RouterClient,
  RouterDataClient,
} from "@switchyard/protocol";
import { service as healthService } from "grpc-health-check";
import type { PoolSummary, UnloadedPool } from "../router.js";
import {
  pickPools,
  replyProblems,
  type SmokeArgs,
  smokeRequest,
  unhealthyWorkers,
  unloadedProblems,
} from "./checks.js";

export interface SmokeResult {
  ok: boolean;
  lines: string[];
}

type HealthClient = {
  check(
    req: { service: string },
    md: Metadata,
    o: { deadline: number },
    cb: (e: Error | null, r?: { status: number | string }) => void,
  ): void;
  close(): void;
};

/** grpc.health.v1 ServingStatus SERVING, as a number or its name (proto-loader's enum option). */
const isServing = (s: number | string | undefined): boolean => s === 1 || s === "SERVING";

async function httpGet(url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}

function forwardGrpc(client: RouterClient, req: ForwardRequest, timeoutMs: number): Promise<ForwardResponse> {
  return new Promise((resolve, reject) =>
    client.forward(req, new Metadata(), { deadline: Date.now() + timeoutMs }, (e, r) =>
      e ? reject(fromGrpcError(e)) : resolve(r),
    ),
  );
}

function describeReply(res: ForwardResponse, ms: number): string {
  const h = res.hidden;
  const s = res.stats;
  return (
    `[${h?.shape.join(", ")}] bf16, ${s?.expertsTouched} experts on ${s?.workersUsed} worker(s)` +
    `${s?.droppedAssignments ? `, ${s.droppedAssignments} assignments dropped by capacity` : ""}, ${ms.toFixed(1)} ms`
  );
}

/** An error as one line: the router's code where it sent one, and what fetch() hides in its cause. */
function reason(e: unknown): string {
  const err = e as Error & { cause?: { message?: string } };
  if (isSwitchyardError(err)) return `${err.code}: ${err.message.replace(/\s+/g, " ").trim()}`;
  return `${err.message}${err.cause?.message ? ` (${err.cause.message})` : ""}`;
}

/**
 * `p`, or a rejection naming `what` once `ms` have passed without it: no check waits on a silent peer for longer than
 * --timeout-ms, whatever deadline its own client keeps (the data path's has none per request).
 */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`no answer within ${ms} ms (--timeout-ms) from ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(t));
}

/**
 * Runs every check; `onLine` gets each line as its check finishes (a check that waits out its timeout is not a
 * silence of the whole run), and the result holds them all.
 */
export async function runSmoke(a: SmokeArgs, onLine: (line: string) => void = () => {}): Promise<SmokeResult> {
  const lines: string[] = [];
  let failed = 0;
  const put = (l: string) => {
    lines.push(l);
    onLine(l);
  };
  const pass = (l: string) => put(`ok    ${l}`);
  const fail = (l: string) => {
    failed++;
    put(`FAIL  ${l}`);
  };
  // A check that throws, or takes longer than --timeout-ms, fails with its message; the others still run.
  const attempt = async (what: string, peer: string, fn: () => Promise<string>): Promise<void> => {
    try {
      pass(`${what}: ${await within(fn(), a.timeoutMs, peer)}`);
    } catch (e) {
      fail(`${what}: ${reason(e)}`);
    }
  };

  await attempt(`${a.http}/readyz`, a.http, async () => {
    const r = await httpGet(`${a.http}/readyz`, a.timeoutMs);
    if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${r.body.trim()}`);
    return r.body.trim();
  });

  const Health = makeGenericClientConstructor(healthService, "Health");
  const health = new Health(a.router, credentials.createInsecure()) as unknown as HealthClient;
  await attempt(`${a.router} grpc.health.v1 switchyard.v1.Router`, a.router, async () => {
    const r = await new Promise<{ status: number | string }>((resolve, reject) =>
      health.check(
        { service: "switchyard.v1.Router" },
        new Metadata(),
        { deadline: Date.now() + a.timeoutMs },
        (e, res) => (e ? reject(fromGrpcError(e)) : resolve(res!)),
      ),
    );
    if (!isServing(r.status)) throw new Error(`status ${r.status}, want SERVING`);
    return "SERVING";
  });
  health.close();

  let pools: PoolSummary[] = [];
  let unloaded: UnloadedPool[] = [];
  await attempt(`${a.http}/pools`, a.http, async () => {
    const r = await httpGet(`${a.http}/pools`, a.timeoutMs);
    if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${r.body.trim()}`);
    const body = JSON.parse(r.body) as { pools: PoolSummary[]; unloaded?: UnloadedPool[] };
    unloaded = body.unloaded ?? [];
    pools = pickPools(body.pools, a.pools, unloaded);
    return pools.map((p) => `${p.name} (${p.family}, d ${p.hiddenSize}, ${p.workers.length} workers)`).join("; ");
  });
  for (const l of unloadedProblems(unloaded, a.pools)) fail(l);

  const client = new RouterClient(a.router, credentials.createInsecure());
  const host = a.router.slice(0, a.router.lastIndexOf(":"));
  const data = a.dataPort ? new RouterDataClient(host, a.dataPort, { connectTimeoutMs: a.timeoutMs }) : null;
  try {
    for (const [i, p] of pools.entries()) {
      const sick = unhealthyWorkers(p);
      if (sick.length) for (const l of sick) fail(`pool ${p.name}: ${l}`);
      else pass(`pool ${p.name}: ${p.workers.length} worker(s) answering, plan v${p.planVersion}`);
      const paths: [string, string, (req: ForwardRequest) => Promise<ForwardResponse>][] = [
        ["gRPC", a.router, (req) => forwardGrpc(client, req, a.timeoutMs)],
      ];
      if (data) paths.push([`data path :${a.dataPort}`, `${host}:${a.dataPort}`, (req) => data.forward(req)]);
      for (const [j, [name, peer, send]] of paths.entries()) {
        const req = smokeRequest(p, a.tokens, a.timeoutMs, 1 + 2 * i + j);
        await attempt(
          `pool ${p.name}: Forward over ${name}, layer ${req.layer}, ${a.tokens} tokens`,
          peer,
          async () => {
            const t0 = performance.now();
            const res = await send(req);
            const problems = replyProblems(p, req, res);
            if (problems.length) throw new Error(problems.join("; "));
            return describeReply(res, performance.now() - t0);
          },
        );
      }
    }
  } finally {
    client.close();
    data?.close();
  }
  const total = lines.length;
  put(failed ? `smoke: ${failed} of ${total} checks failed` : `smoke: all ${total} checks passed`);
  return { ok: failed === 0, lines };
}
