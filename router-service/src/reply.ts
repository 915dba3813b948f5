// What both of the router's servers (gRPC, server.ts; the TCP data path, data-server.ts) do with an answered request:
// its reply's bytes, the pool it belongs to, and its count in switchyard_router_requests_total.

import { errorCodeOf, ForwardResponse } from "@switchyard/protocol";
import { UNKNOWN_POOL } from "./metrics.js";
import { POOL, type Router } from "./router.js";
import { ENCODED } from "./wire/encode.js";

/** A reply's bytes: those the router already encoded (wire/encode.ts), or encoded here. */
export const serializeResponse = (v: ForwardResponse): Buffer =>
  (v as unknown as Record<symbol, Buffer | undefined>)[ENCODED] ?? Buffer.from(ForwardResponse.encode(v).finish());

/** The pool a reply belongs to (the router tags its replies; see POOL in router.ts). */
export function poolOf(res: ForwardResponse): string {
  return (res as unknown as Record<symbol, string | undefined>)[POOL] ?? "";
}

/** Counts one answered request into switchyard_router_requests_total (err null: OK). */
export type RequestCounter = (pool: string, method: string, err: unknown | null) => void;

/** The request counter of a router's servers, its label-bound children cached. */
export function requestCounter(router: Router): RequestCounter {
  const m = router.metrics;
  // Label-bound children, cached: prom-client would hash the label object on every request otherwise.
  const children = new Map<string, Map<string, Map<string, { inc(): void }>>>();
  return (pool, method, err) => {
    const code = err ? errorCodeOf(err) : "OK";
    // Nested maps, not a joined string key: no string building per request on the hot path.
    let byPool = children.get(method);
    if (!byPool) {
      byPool = new Map();
      children.set(method, byPool);
    }
    let byCode = byPool.get(pool);
    let c = byCode?.get(code);
    if (!c) {
      // Unknown pool names come from callers: do not let them grow the cache (or the series) without bound. They count
      // under one label value that no served pool can have (UNKNOWN_POOL).
      if (!router.poolNames().includes(pool)) return void m.requests.inc({ pool: UNKNOWN_POOL, method, code });
      if (!byCode) {
        byCode = new Map();
        byPool.set(pool, byCode);
      }
      c = m.requests.labels({ pool, method, code });
      byCode.set(code, c);
    }
    c.inc();
  };
}
