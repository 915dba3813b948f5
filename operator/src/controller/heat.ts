// Expert heat from Prometheus, pure: the PromQL text for one pool, and the instant-vector answer turned into the
// [layer][expert] load matrix the placement planner takes. The router exports the heat as the counter
// switchyard_router_expert_tokens_total{pool, layer, expert} (router-service/src/metrics.ts): (token, expert)
// assignments of routed experts only (the shared expert's slices take every token and are added by desiredPlan).

export const HEAT_METRIC = "switchyard_router_expert_tokens_total";

/** A PromQL double-quoted string literal's body: backslash, quote and line breaks escaped (Go string syntax). */
export function promString(value: string): string {
  return value.replace(
    /[\\"\n\r\t]/g,
    (c) => ({ "\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t" })[c] ?? c,
  );
}

/** A regular expression matching exactly `value` (its metacharacters escaped), as a PromQL string literal's body. */
export function promRegexLiteral(value: string): string {
  return promString(value.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
}

/**
 * Token assignments per (layer, expert) of one pool over the last `window`, summed over router replicas.
 * increase() copes with counter resets (a router restart) and extrapolates to the window's edges.
 * `pool` is the name the router serves the pool under (routing.ts routerPoolName): a pool in the router's namespace
 * goes by its bare name, so another install's router in the same Prometheus may serve a pool of that name too.
 * `routerNamespace`, the router's namespace, keeps to this install's routers by the `namespace` the scrape puts on
 * their series (the chart's ServiceMonitor: the router Service's); series without one (a scrape config that adds no
 * namespace) are still read.
 */
export function heatQuery(pool: string, window: string, routerNamespace?: string): string {
  const ns = routerNamespace === undefined ? "" : `, namespace=~"${promRegexLiteral(routerNamespace)}|"`;
  return `sum by (layer, expert) (increase(${HEAT_METRIC}{pool="${promString(pool)}"${ns}}[${window}]))`;
}

export interface HeatShape {
  layers: number;
  experts: number;
  /** The shared expert's slices the plan places (expert ids experts .. experts + slices - 1); default 0. */
  slices?: number;
}

export interface ParsedHeat {
  /**
   * load[layer][expert]; undefined when no series carried any traffic (the plan then stays uniform). Rows hold the
   * routed experts, and the slices too when some slice series counted tokens (the router counts the tokens it sends
   * them where the workers run them; desired.ts planLoad estimates a layer's slices whose columns have none).
   */
  load: number[][] | undefined;
  /** Assignments counted. */
  total: number;
  /** Series left out: expert="other" (the router's overflow bucket), out of range, non-numeric, NaN, negative. */
  ignored: number;
  /**
   * Assignments the router folded into expert="other" past its series cap: heat that cannot be placed, so a plan
   * judged without it would be judged on part of the traffic (whole layers reading as idle).
   */
  folded: number;
}

/** A non-negative integer label value ("07" and "1e1" are not what the router writes). */
function index(label: string | undefined, bound: number): number | undefined {
  if (label === undefined || !/^(0|[1-9][0-9]*)$/.test(label)) return undefined;
  const i = Number(label);
  return i < bound ? i : undefined;
}

/**
 * Reads a GET /api/v1/query answer. Throws with Prometheus's own error text when the query failed, or when the
 * answer is not an instant vector; a series it cannot place is counted in `ignored`, never fatal, and a missing
 * (layer, expert) is 0 (no traffic, or the router has not seen it yet).
 */
export function parseHeat(body: unknown, shape: HeatShape): ParsedHeat {
  const b = body as {
    status?: string;
    error?: string;
    errorType?: string;
    data?: { resultType?: string; result?: unknown };
  };
  if (!b || typeof b !== "object") throw new Error("prometheus: answer is not a JSON object");
  if (b.status !== "success") throw new Error(`prometheus: ${b.errorType ?? "error"}: ${b.error ?? "no error text"}`);
  if (b.data?.resultType !== "vector" || !Array.isArray(b.data.result))
    throw new Error(`prometheus: expected an instant vector, got ${String(b.data?.resultType)}`);
  const width = shape.experts + (shape.slices ?? 0);
  const load = Array.from({ length: shape.layers }, () => new Array<number>(width).fill(0));
  let total = 0;
  let ignored = 0;
  let folded = 0;
  let sliceSeries = false;
  for (const r of b.data.result as { metric?: Record<string, string>; value?: [number, string] }[]) {
    const l = index(r?.metric?.layer, shape.layers);
    const e = index(r?.metric?.expert, width);
    // Prometheus writes sample values as strings ("NaN", "+Inf" included).
    const v = Number(r?.value?.[1]);
    // Only a slice series that counted tokens: a stale one (increase 0 after the router stopped sending the slices
    // anything, or NaN) would read as slices that see no token, when every token goes through them.
    if (l !== undefined && e !== undefined && e >= shape.experts && Number.isFinite(v) && v > 0) sliceSeries = true;
    if (r?.metric?.expert === "other" && Number.isFinite(v) && v > 0) folded += v;
    if (l === undefined || e === undefined || !Number.isFinite(v) || v < 0) {
      ignored++;
      continue;
    }
    load[l][e] += v;
    total += v;
  }
  const rows = sliceSeries ? load : load.map((row) => row.slice(0, shape.experts));
  return { load: total > 0 ? rows : undefined, total, ignored, folded };
}
