// The Hub token sync's I/O over a fake API server that applies as server-side apply does with one manager: the
// router Secret follows the pools, unchanged passes write nothing, problems are told once, and no token ever
// reaches an event or an error message.
import { describe, expect, it } from "vitest";
import type { ExpertPool } from "../api/v1alpha1.js";
import type { EventRecorder } from "../runtime/events.js";
import { type Kube, KubeError } from "../runtime/kube.js";
import { testPool } from "./fixtures.js";
import { HubTokenSync } from "./hub-token-sync.js";

const ROUTER = { namespace: "rel", name: "tokens" };
const ROUTER_PATH = "/api/v1/namespaces/rel/secrets/tokens";
const b64 = (s: string) => Buffer.from(s).toString("base64");

function hfPool(name: string, tokenSecret: { name: string; key?: string }): ExpertPool {
  const p = testPool({ model: { checkpoint: { uri: "hf://org/m", tokenSecret } } }, name);
  delete (p.spec.model.checkpoint as { hostPath?: unknown }).hostPath;
  return p;
}

type Secret = { data?: Record<string, string>; metadata: { managedFields: object[] } };

function harness() {
  const secrets = new Map<string, Secret>();
  const gets: string[] = [];
  let applies = 0;
  const forbidden = new Set<string>();
  let failGet: KubeError | undefined;
  let failApply: KubeError | undefined;
  const kube = {
    get: async (path: string) => {
      gets.push(path);
      if (failGet) throw failGet;
      if (forbidden.has(path))
        throw new KubeError(403, "Forbidden", `GET ${path}: 403 Forbidden: secrets is forbidden`);
      return structuredClone(secrets.get(path));
    },
    // server-side apply of one manager on .data: its old keys replaced by the body's, other managers' kept
    apply: async (path: string, body: { data?: Record<string, string> }, manager: string) => {
      applies++;
      if (failApply) throw failApply;
      const live = secrets.get(path) ?? { data: {}, metadata: { managedFields: [] } };
      const mf = live.metadata.managedFields as { manager: string; fieldsV1: { "f:data": object } }[];
      const mine = mf.find((m) => m.manager === manager);
      for (const f of Object.keys(mine?.fieldsV1["f:data"] ?? {})) delete live.data?.[f.slice(2)];
      live.data = { ...live.data, ...body.data };
      const entry = {
        manager,
        operation: "Apply",
        fieldsV1: { "f:data": Object.fromEntries(Object.keys(body.data ?? {}).map((k) => [`f:${k}`, {}])) },
      };
      live.metadata.managedFields = [...mf.filter((m) => m !== mine), entry];
      secrets.set(path, live);
      return live;
    },
  } as unknown as Kube;
  const events: { reason: string; message: string; name: string; type: string }[] = [];
  const recorder = {
    emit: async (o: { name: string }, type: string, reason: string, message: string) => {
      events.push({ name: o.name, type, reason, message });
    },
  } as unknown as EventRecorder;
  const sync = new HubTokenSync({ kube, events: recorder, router: ROUTER });
  const put = (ns: string, name: string, data: Record<string, string>) =>
    secrets.set(`/api/v1/namespaces/${ns}/secrets/${name}`, { data, metadata: { managedFields: [] } });
  return {
    sync,
    secrets,
    put,
    gets,
    events,
    forbidden,
    applies: () => applies,
    router: () => secrets.get(ROUTER_PATH)?.data,
    failGet: (e?: KubeError) => {
      failGet = e;
    },
    failApply: (e?: KubeError) => {
      failApply = e;
    },
  };
}

describe("HubTokenSync", () => {
  it("copies each pool's token under <namespace>_<pool>, once per Secret read; an unchanged pass writes nothing", async () => {
    const h = harness();
    h.put("ns", "hf", { HF_TOKEN: b64("hf_one"), token: b64("hf_two") });
    const pools = [hfPool("a", { name: "hf" }), hfPool("b", { name: "hf", key: "token" }), testPool({}, "local")];
    const r = await h.sync.sync(pools);
    expect(r).toMatchObject({ keys: ["ns_a", "ns_b"], applied: true });
    expect(h.router()).toEqual({ ns_a: b64("hf_one"), ns_b: b64("hf_two") });
    expect(h.gets.filter((p) => p.endsWith("/secrets/hf"))).toHaveLength(1);
    expect((await h.sync.sync(pools)).applied).toBe(false);
    expect(h.applies()).toBe(1);
    // a rotated token: the next pass
    h.put("ns", "hf", { HF_TOKEN: b64("hf_rotated"), token: b64("hf_two") });
    expect((await h.sync.sync(pools)).applied).toBe(true);
    expect(h.router()?.ns_a).toBe(b64("hf_rotated"));
  });

  it("a pool gone, or its Secret gone, takes its key out; the user's own keys stay", async () => {
    const h = harness();
    h.put("ns", "hf", { HF_TOKEN: b64("t") });
    h.put("ns", "other", { HF_TOKEN: b64("u") });
    h.secrets.set(ROUTER_PATH, { data: { by_hand: b64("x") }, metadata: { managedFields: [] } });
    await h.sync.sync([hfPool("a", { name: "hf" }), hfPool("b", { name: "other" })]);
    expect(Object.keys(h.router() ?? {}).sort()).toEqual(["by_hand", "ns_a", "ns_b"]);
    await h.sync.sync([hfPool("a", { name: "hf" })]);
    expect(Object.keys(h.router() ?? {}).sort()).toEqual(["by_hand", "ns_a"]);
    h.secrets.delete("/api/v1/namespaces/ns/secrets/hf");
    await h.sync.sync([hfPool("a", { name: "hf" })]);
    expect(h.router()).toEqual({ by_hand: b64("x") });
  });

  it("no pool with a token and no router Secret: nothing created", async () => {
    const h = harness();
    await h.sync.sync([testPool({}, "local")]);
    expect(h.applies()).toBe(0);
    expect(h.gets).toEqual([ROUTER_PATH]);
  });

  it("a missing Secret or key, or one it may not read: one Warning naming Secret and key, the others still synced", async () => {
    const h = harness();
    h.put("ns", "hf", { HF_TOKEN: b64("hf_secret_value") });
    h.put("ns", "nokey", { other: b64("hf_secret_value") });
    h.forbidden.add("/api/v1/namespaces/ns/secrets/locked");
    const pools = [
      hfPool("ok", { name: "hf" }),
      hfPool("nosecret", { name: "absent" }),
      hfPool("nokey", { name: "nokey", key: "token" }),
      hfPool("locked", { name: "locked" }),
    ];
    const r = await h.sync.sync(pools);
    expect(r.keys).toEqual(["ns_ok"]);
    expect(h.router()).toEqual({ ns_ok: b64("hf_secret_value") });
    expect(h.events.map((e) => [e.name, e.type, e.reason])).toEqual([
      ["locked", "Warning", "HubTokenForbidden"],
      ["nokey", "Warning", "HubTokenMissing"],
      ["nosecret", "Warning", "HubTokenMissing"],
    ]);
    expect(h.events[1].message).toContain("Secret nokey has no key token");
    expect(h.events[2].message).toContain("Secret absent not found in namespace ns");
    // told once while it lasts; told again when it comes back after being solved
    await h.sync.sync(pools);
    expect(h.events).toHaveLength(3);
    h.put("ns", "absent", { HF_TOKEN: b64("late") });
    await h.sync.sync(pools);
    expect(h.router()?.ns_nosecret).toBe(b64("late"));
    h.secrets.delete("/api/v1/namespaces/ns/secrets/absent");
    await h.sync.sync(pools);
    expect(h.events.map((e) => e.name)).toEqual(["locked", "nokey", "nosecret", "nosecret"]);
    for (const e of h.events) {
      expect(e.message).not.toContain(b64("hf_secret_value"));
      expect(e.message).not.toContain("hf_secret_value");
    }
  });

  it("a failed read or write fails the pass with the status alone (retried), never the server's text", async () => {
    const h = harness();
    h.put("ns", "hf", { HF_TOKEN: b64("hf_secret_value") });
    const leaky = (code: number) =>
      new KubeError(code, "Invalid", `PATCH: ${code} Invalid: data: ${b64("hf_secret_value")} is bad`);
    h.failApply(leaky(422));
    const err = await h.sync.sync([hfPool("a", { name: "hf" })]).catch((e: Error) => e);
    expect(err).toBeInstanceOf(KubeError);
    expect((err as Error).message).toBe("apply Secret rel/tokens: 422 Invalid");
    h.failApply();
    h.failGet(leaky(500));
    expect(((await h.sync.sync([hfPool("a", { name: "hf" })]).catch((e: Error) => e)) as Error).message).toBe(
      "GET Secret ns/hf: 500 Invalid",
    );
  });
});
