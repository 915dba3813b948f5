// The REST client against a scripted fake API server: throttling answers with Retry-After are retried, as
// client-go's rest client does; other errors come back at once with the server's Status.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { applyOwnership, Kube, KubeError, type ManagedFieldsEntry } from "./kube.js";
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

describe("createForApply and settleFieldOwnership", () => {
  const created = (rv: string, managedFields: ManagedFieldsEntry[]) => ({
    metadata: { name: "x", namespace: "ns", resourceVersion: rv, managedFields },
  });
  const update: ManagedFieldsEntry = {
    manager: "op",
    operation: "Update",
    apiVersion: "v1",
    fieldsType: "FieldsV1",
    fieldsV1: { "f:data": { "f:a": {} } },
  };
  const statusEntry: ManagedFieldsEntry = {
    manager: "kcm",
    operation: "Update",
    apiVersion: "v1",
    subresource: "status",
  };
  const PATH = "/api/v1/namespaces/ns/configmaps/x";

  it("a create is one POST under the field manager (no take-over, no ownership move yet)", async () => {
    const seen: string[] = [];
    const kube = await fakeApi((req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers["content-type"]}`);
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify(created("5", [update])));
    });
    const out = await kube.createForApply<ReturnType<typeof created>>(
      "/api/v1/namespaces/ns/configmaps",
      { metadata: { name: "x", namespace: "ns" } },
      "op",
    );
    expect(seen).toEqual(["POST /api/v1/namespaces/ns/configmaps?fieldManager=op application/json"]);
    expect(out.metadata.managedFields).toEqual([update]);
  });

  it("a create refused as AlreadyExists comes back as the 409, nothing else sent", async () => {
    const seen: string[] = [];
    const kube = await fakeApi((req, res) => {
      seen.push(`${req.method}`);
      status(res, 409, "AlreadyExists");
    });
    const err = await kube
      .createForApply("/api/v1/namespaces/ns/configmaps", { metadata: { name: "x" } }, "op")
      .catch((e) => e);
    expect((err as KubeError).code).toBe(409);
    expect(seen).toEqual(["POST"]);
  });

  it("moves the create's fields to the manager's Apply entry: one JSON patch guarded by resourceVersion", async () => {
    const seen: string[] = [];
    const kube = await fakeApi((req, res, body) => {
      seen.push(`${req.method} ${req.url} ${req.headers["content-type"]}`);
      const ops = JSON.parse(body) as { op: string; path: string; value: unknown }[];
      expect(ops[0]).toEqual({ op: "test", path: "/metadata/resourceVersion", value: "5" });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(created("6", ops[1].value as ManagedFieldsEntry[])));
    });
    const out = await kube.settleFieldOwnership(PATH, created("5", [update]), "op");
    expect(seen).toEqual([`PATCH ${PATH} application/json-patch+json`]);
    expect(out?.metadata.managedFields).toEqual([{ ...update, operation: "Apply" }]);
  });

  it("sends nothing when there is nothing to fold", async () => {
    let calls = 0;
    const kube = await fakeApi((_req, res) => {
      calls++;
      status(res, 500, "InternalError");
    });
    const settled = created("5", [statusEntry, { ...update, operation: "Apply" }]);
    expect(await kube.settleFieldOwnership(PATH, settled, "op")).toBe(settled);
    expect(calls).toBe(0);
  });

  it("reads the object again when another write came between (the test op fails) and patches that", async () => {
    const seen: string[] = [];
    const kube = await fakeApi((req, res, body) => {
      seen.push(`${req.method}`);
      if (req.method === "GET") {
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify(created("7", [update, statusEntry])));
      }
      const ops = JSON.parse(body) as { value: unknown }[];
      if (ops[0].value !== "7") return status(res, 422, "Invalid");
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(created("8", ops[1].value as ManagedFieldsEntry[])));
    });
    const out = await kube.settleFieldOwnership(PATH, created("5", [update]), "op");
    expect(seen).toEqual(["PATCH", "GET", "PATCH"]);
    expect(out?.metadata.managedFields).toEqual([statusEntry, { ...update, operation: "Apply" }]);
  });

  it("after three lost races, the last object read (its Update entry still there); undefined once it is gone", async () => {
    const seen: string[] = [];
    let gone = false;
    const kube = await fakeApi((req, res) => {
      seen.push(`${req.method}`);
      if (req.method === "PATCH") return status(res, 409, "Conflict");
      if (gone) return status(res, 404, "NotFound");
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(created(String(seen.length), [update])));
    });
    const out = await kube.settleFieldOwnership(PATH, created("1", [update]), "op");
    expect(seen).toEqual(["PATCH", "GET", "PATCH", "GET", "PATCH", "GET"]);
    expect(out?.metadata.managedFields).toEqual([update]);
    gone = true;
    expect(await kube.settleFieldOwnership(PATH, created("1", [update]), "op")).toBeUndefined();
  });
});

describe("applyOwnership", () => {
  const e = (operation: string, fieldsV1: Record<string, unknown>, more: Partial<ManagedFieldsEntry> = {}) => ({
    manager: "op",
    operation,
    apiVersion: "apps/v1",
    fieldsType: "FieldsV1",
    fieldsV1,
    ...more,
  });

  it("is undefined without an Update entry of the manager (nothing to do)", () => {
    expect(applyOwnership(undefined, "op")).toBeUndefined();
    expect(applyOwnership([e("Apply", {}), e("Update", {}, { manager: "kubectl" })], "op")).toBeUndefined();
    expect(applyOwnership([e("Update", {}, { subresource: "status" })], "op")).toBeUndefined();
  });

  it("turns a create's Update entry into the Apply entry, leaving other managers' entries", () => {
    const other = e("Update", { "f:status": {} }, { manager: "kcm", subresource: "status" });
    expect(applyOwnership([e("Update", { "f:spec": { "f:replicas": {} } }), other], "op")).toEqual([
      other,
      e("Apply", { "f:spec": { "f:replicas": {} } }),
    ]);
  });

  it("folds it into the Apply entry the manager has: the union of both field sets; the input is not changed", () => {
    const applied = e("Apply", { "f:metadata": { "f:labels": { "f:a": {} } }, "f:spec": { "f:replicas": {} } });
    const before = structuredClone(applied);
    const out = applyOwnership(
      [applied, e("Update", { "f:metadata": { "f:labels": { ".": {}, "f:b": {} } }, "f:spec": { "f:template": {} } })],
      "op",
    );
    expect(out).toEqual([
      e("Apply", {
        "f:metadata": { "f:labels": { "f:a": {}, ".": {}, "f:b": {} } },
        "f:spec": { "f:replicas": {}, "f:template": {} },
      }),
    ]);
    expect(applied).toEqual(before);
  });
});
