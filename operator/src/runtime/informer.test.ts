// The informer against a scripted fake API server (plain HTTP): list, watch from the list's resourceVersion,
// relist after 410 Gone, restart with backoff after a failed list, managedFields dropped.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { Informer, type InformerEvent } from "./informer.js";
import { Kube } from "./kube.js";
import { kubeConfigFor, until } from "./testing.js";

interface Obj {
  metadata: { name: string; namespace: string; resourceVersion: string; managedFields?: unknown[] };
}

const cm = (name: string, rv: string): Obj => ({
  metadata: { name, namespace: "ns", resourceVersion: rv, managedFields: [{ manager: "x" }] },
});

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void;

let server: Server | undefined;
afterEach(async () => {
  const s = server;
  server = undefined;
  if (!s) return;
  const closed = new Promise((r) => s.close(r));
  s.closeAllConnections(); // open watches would hold close() forever
  await closed;
});

async function fakeApi(handler: Handler): Promise<Kube> {
  server = createServer((req, res) => handler(req, res, new URL(req.url ?? "/", "http://x")));
  const kc = await kubeConfigFor(server);
  return new Kube(kc);
}

describe("Informer", () => {
  it("lists, watches from the list's resourceVersion, and relists after 410 Gone", async () => {
    const lists: string[] = [];
    const watches: string[] = [];
    const watchQueries: string[] = [];
    const kube = await fakeApi((_req, res, url) => {
      res.setHeader("content-type", "application/json");
      if (url.searchParams.get("watch") !== "true") {
        lists.push(url.search);
        const second = lists.length > 1;
        res.end(
          JSON.stringify({
            metadata: { resourceVersion: second ? "20" : "10" },
            items: second ? [cm("b", "20")] : [cm("a", "10")],
          }),
        );
        return;
      }
      watches.push(url.searchParams.get("resourceVersion") ?? "");
      watchQueries.push(url.search);
      if (watches.length === 1) {
        // An update, then "too old": the client must forget its resourceVersion and list again.
        res.write(`${JSON.stringify({ type: "MODIFIED", object: cm("a", "11") })}\n`);
        res.end(`${JSON.stringify({ type: "ERROR", object: { kind: "Status", code: 410, reason: "Expired" } })}\n`);
        return;
      }
      res.writeHead(200); // later watches stay open and quiet
      res.flushHeaders();
    });
    const events: [InformerEvent, string][] = [];
    const inf = new Informer<Obj>(kube, {
      name: "cms",
      path: "/api/v1/namespaces/ns/configmaps",
      labelSelector: "a=b",
      fieldSelector: "metadata.namespace=ns",
      onEvent: (ev, o) => events.push([ev, o.metadata.name]),
    });
    await inf.start();
    await inf.waitSynced();
    await until(() => lists.length >= 2 && watches.length >= 2);
    await until(() => inf.get("ns", "b") !== undefined);
    expect(watches[0]).toBe("10");
    expect(watches[1]).toBe("20");
    // both selectors narrow the list and the watch
    for (const q of [lists[0], watchQueries[0]]) {
      expect(q).toContain("labelSelector=a%3Db");
      expect(q).toContain("fieldSelector=metadata.namespace%3Dns");
    }
    expect(inf.get("ns", "a")).toBeUndefined(); // gone from the relist
    expect(inf.get("ns", "b")?.metadata.managedFields).toBeUndefined();
    expect(events).toEqual([
      ["add", "a"],
      ["update", "a"],
      ["delete", "a"],
      ["add", "b"],
    ]);
    // The client counts a watch once its response headers arrive, which can trail the server seeing the request.
    await until(() => (kube.counts.get("list") ?? 0) >= 2 && (kube.counts.get("watch") ?? 0) >= 2);
    await inf.stop();
  });

  it("restarts with backoff after the API server fails, then syncs", async () => {
    let calls = 0;
    const kube = await fakeApi((_req, res, url) => {
      if (url.searchParams.get("watch") === "true") {
        res.writeHead(200); // hold the watch open
        res.flushHeaders();
        return;
      }
      calls++;
      if (calls <= 2) {
        res.statusCode = 503;
        res.end(JSON.stringify({ kind: "Status", code: 503, reason: "ServiceUnavailable", message: "starting" }));
        return;
      }
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ metadata: { resourceVersion: "5" }, items: [cm("a", "5")] }));
    });
    const logs: string[] = [];
    const inf = new Informer<Obj>(kube, {
      name: "cms",
      path: "/api/v1/namespaces/ns/configmaps",
      onEvent: () => {},
      log: (m) => logs.push(m),
    });
    const t0 = Date.now();
    await inf.start();
    await inf.waitSynced();
    expect(calls).toBe(3);
    expect(inf.get("ns", "a")).toBeDefined();
    // Two failures: about 500 ms then 1000 ms of backoff (with ±20% jitter).
    expect(Date.now() - t0).toBeGreaterThan(1000);
    expect(logs[0]).toMatch(/informer cms: .*503 ServiceUnavailable: starting; restarting in \d+ ms/);
    await inf.stop();
  });

  it("counts a refused watch under the server's status, not as a success", async () => {
    let watches = 0;
    const kube = await fakeApi((_req, res, url) => {
      res.setHeader("content-type", "application/json");
      if (url.searchParams.get("watch") === "true") {
        if (++watches === 1) {
          res.statusCode = 403;
          res.end(JSON.stringify({ kind: "Status", code: 403, reason: "Forbidden" }));
          return;
        }
        res.writeHead(200);
        res.flushHeaders();
        return;
      }
      res.end(JSON.stringify({ metadata: { resourceVersion: "5" }, items: [] }));
    });
    const codes: number[] = [];
    kube.onRequest((r) => {
      if (r.verb === "watch") codes.push(r.code);
    });
    const inf = new Informer<Obj>(kube, { name: "cms", path: "/api/v1/namespaces/ns/configmaps", onEvent: () => {} });
    await inf.start();
    await until(() => codes.length >= 2);
    expect(codes.slice(0, 2)).toEqual([403, 200]);
    await inf.stop();
  });
});
