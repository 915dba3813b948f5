// The REST client against a scripted fake API server: throttling answers with Retry-After are retried, as
// client-go's rest client does; other errors come back at once with the server's Status.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { Kube, KubeError } from "./kube.js";
import { kubeConfigFor } from "./testing.js";

let server: Server | undefined;
afterEach(async () => {
  const s = server;
  server = undefined;
  if (!s) return;
  const closed = new Promise((r) => s.close(r));
  s.closeAllConnections();
  await closed;
});

async function fakeApi(handler: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<Kube> {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => {
      body += d;
    });
    req.on("end", () => handler(req, res, body));
  });
  const kc = await kubeConfigFor(server);
  return new Kube(kc);
}

const status = (res: ServerResponse, code: number, reason: string, headers: Record<string, string> = {}) => {
  res.writeHead(code, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify({ kind: "Status", code, reason, message: reason }));
};

describe("Kube", () => {
  it("retries 429 and 5xx answers that carry Retry-After, resending the body, and counts every attempt", async () => {
    const bodies: string[] = [];
    const kube = await fakeApi((_req, res, body) => {
      bodies.push(body);
      if (bodies.length === 1) return status(res, 429, "TooManyRequests", { "retry-after": "0" });
      if (bodies.length === 2) return status(res, 503, "ServiceUnavailable", { "retry-after": "0" });
      res.writeHead(201, { "content-type": "application/json" });
      res.end(body);
    });
    const out = await kube.create<{ data: { a: string } }>("/api/v1/namespaces/ns/configmaps", { data: { a: "1" } });
    expect(out.data.a).toBe("1");
    expect(bodies).toEqual(Array(3).fill(JSON.stringify({ data: { a: "1" } })));
    expect(kube.counts.get("create")).toBe(3);
  });

  it("waits the Retry-After seconds before the retry", async () => {
    const at: number[] = [];
    const kube = await fakeApi((_req, res) => {
      at.push(Date.now());
      if (at.length === 1) return status(res, 429, "TooManyRequests", { "retry-after": "1" });
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    });
    await kube.get("/api/v1/namespaces/ns/configmaps/x");
    expect(at).toHaveLength(2);
    expect(at[1] - at[0]).toBeGreaterThanOrEqual(900);
  });

  it("does not retry errors without Retry-After", async () => {
    let calls = 0;
    const kube = await fakeApi((_req, res) => {
      calls++;
      status(res, calls === 1 ? 500 : 429, "InternalError");
    });
    const err = await kube.get("/api/v1/namespaces/ns/configmaps/x").catch((e) => e);
    expect(err).toBeInstanceOf(KubeError);
    expect((err as KubeError).code).toBe(500);
    expect(calls).toBe(1);
  });

  it("gives up after a bounded number of retries with the last answer's error", async () => {
    let calls = 0;
    const kube = await fakeApi((_req, res) => {
      calls++;
      status(res, 429, "TooManyRequests", { "retry-after": "0" });
    });
    const err = await kube.get("/api/v1/namespaces/ns/configmaps/x").catch((e) => e);
    expect((err as KubeError).code).toBe(429);
    expect(calls).toBe(11); // client-go's 10 retries
  });
});
