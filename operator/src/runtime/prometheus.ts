// A minimal Prometheus HTTP API client: one instant query (GET <url>/api/v1/query?query=...) with a timeout.
// It returns the decoded JSON body and leaves reading it to the pure parsers (controller/heat.ts); every failure
// (refused, timed out, not JSON, HTTP error without a Prometheus error body) becomes an Error with a short reason.

export type FetchLike = (
  url: string,
  init: { signal: AbortSignal; headers: Record<string, string> },
) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;

export interface PromQueryOptions {
  timeoutMs: number;
  fetch?: FetchLike;
}

export function instantQueryUrl(base: string, promql: string): string {
  return `${base.replace(/\/+$/, "")}/api/v1/query?query=${encodeURIComponent(promql)}`;
}

export async function promInstantQuery(base: string, promql: string, o: PromQueryOptions): Promise<unknown> {
  const f = o.fetch ?? (fetch as unknown as FetchLike);
  const url = instantQueryUrl(base, promql);
  let res: Awaited<ReturnType<FetchLike>>;
  let text: string;
  try {
    // The signal covers the body too: a server that sends headers and then stalls still times out.
    const signal = AbortSignal.timeout(o.timeoutMs);
    res = await f(url, { signal, headers: { Accept: "application/json" } });
    text = await res.text();
  } catch (e) {
    const err = e as Error & { cause?: { code?: string; message?: string } };
    if (err.name === "TimeoutError" || err.name === "AbortError")
      throw new Error(`no answer from ${base} within ${o.timeoutMs} ms`);
    throw new Error(`${base}: ${err.cause?.code ?? err.cause?.message ?? err.message}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${base}: HTTP ${res.status}, not a Prometheus API answer: ${text.slice(0, 120)}`);
  }
  // Prometheus answers a bad query with HTTP 400 and {status: "error", error}: the parser reports that text.
  if (!res.ok && (body as { status?: unknown } | null)?.status !== "error")
    throw new Error(`${base}: HTTP ${res.status}: ${text.slice(0, 120)}`);
  return body;
}
