// The Prometheus client against a local HTTP server playing Prometheus: the URL it asks, and every way an answer
// can fail turning into an Error with a short reason (never a hang past the timeout).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { instantQueryUrl, promInstantQuery } from "./prometheus.js";

let server: Server;
let base: string;
const asked: string[] = [];
let answer: (req: IncomingMessage, res: ServerResponse) => void = (_q, r) => r.end();

beforeAll(async () => {
  server = createServer((req, res) => {
    asked.push(req.url ?? "");
    answer(req, res);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe("promInstantQuery", () => {
  it("GETs /api/v1/query with the PromQL encoded, under a base URL with or without a path and slash", async () => {
    expect(instantQueryUrl("http://prom:9090/prometheus/", 'up{job="a b"}')).toBe(
      "http://prom:9090/prometheus/api/v1/query?query=up%7Bjob%3D%22a%20b%22%7D",
    );
    answer = (_q, r) => r.end(JSON.stringify({ status: "success", data: { resultType: "vector", result: [] } }));
    const body = await promInstantQuery(`${base}/`, "sum(up)", { timeoutMs: 2000 });
    expect(body).toEqual({ status: "success", data: { resultType: "vector", result: [] } });
    expect(asked.at(-1)).toBe("/api/v1/query?query=sum(up)");
  });

  it("returns Prometheus's error body for a bad query (HTTP 400), for the parser to report", async () => {
    const err = { status: "error", errorType: "bad_data", error: "parse error" };
    answer = (_q, r) => r.writeHead(400, { "Content-Type": "application/json" }).end(JSON.stringify(err));
    expect(await promInstantQuery(base, "sum(", { timeoutMs: 2000 })).toEqual(err);
  });

  it("fails with the HTTP status on anything that is not a Prometheus answer", async () => {
    answer = (_q, r) => r.writeHead(502).end("<html>bad gateway</html>");
    await expect(promInstantQuery(base, "up", { timeoutMs: 2000 })).rejects.toThrow(
      /HTTP 502, not a Prometheus API answer: <html>bad gateway/,
    );
    answer = (_q, r) => r.writeHead(503).end("{}");
    await expect(promInstantQuery(base, "up", { timeoutMs: 2000 })).rejects.toThrow(/HTTP 503/);
  });

  it("times out on a server that never answers, and names a refused connection", async () => {
    answer = () => {}; // hold the request open
    const t0 = Date.now();
    await expect(promInstantQuery(base, "up", { timeoutMs: 200 })).rejects.toThrow(
      `no answer from ${base} within 200 ms`,
    );
    expect(Date.now() - t0).toBeLessThan(2000);
    // a port nobody listens on: take one and give it back
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    await expect(promInstantQuery(`http://127.0.0.1:${port}`, "up", { timeoutMs: 2000 })).rejects.toThrow(
      "ECONNREFUSED",
    );
  });
});
