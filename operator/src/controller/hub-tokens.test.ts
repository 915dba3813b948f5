import { describe, expect, it } from "vitest";
import type { ExpertPool } from "../api/v1alpha1.js";
import { testPool } from "./fixtures.js";
import {
  appliedDataKeys,
  forbidden,
  newProblems,
  ownsRouterSecret,
  routerSecretApply,
  routerSecretNeedsApply,
  type TokenProblem,
  tokenFromSecret,
  tokenSources,
} from "./hub-tokens.js";

const ROUTER = { namespace: "rel", name: "sy-router-hf-tokens" };
const M = "switchyard-operator";

function hfPool(name: string, ns = "ns", tokenSecret?: { name: string; key?: string }, uri = "hf://org/m"): ExpertPool {
  const p = testPool({ model: { checkpoint: { uri, ...(tokenSecret ? { tokenSecret } : {}) } } }, name);
  delete (p.spec.model.checkpoint as { hostPath?: unknown }).hostPath;
  p.metadata.namespace = ns;
  return p;
}

/** managedFields as the API server writes them for an apply of these data keys. */
const applied = (keys: string[], manager = M, operation = "Apply") => ({
  manager,
  operation,
  fieldsV1: { "f:data": Object.fromEntries(keys.map((k) => [`f:${k}`, {}])) },
});

describe("tokenSources", () => {
  it("hf:// pools with a tokenSecret, default key HF_TOKEN, sorted by router key; not https://, not being deleted", () => {
    const gone = hfPool("gone", "ns", { name: "hf" });
    gone.metadata.deletionTimestamp = "2026-01-01T00:00:00Z";
    const pools = [
      hfPool("zeta", "b", { name: "hf", key: "token" }),
      hfPool("alpha", "b", { name: "hf" }),
      hfPool("web", "a", { name: "hf" }, "https://example.com/m/"),
      hfPool("open", "a"),
      testPool({}, "local"),
      gone,
    ];
    expect(tokenSources(pools)).toEqual([
      { pool: "b/alpha", routerKey: "b_alpha", namespace: "b", secret: "hf", key: "HF_TOKEN" },
      { pool: "b/zeta", routerKey: "b_zeta", namespace: "b", secret: "hf", key: "token" },
    ]);
  });
});

describe("tokenFromSecret", () => {
  const [src] = tokenSources([hfPool("gated", "ns", { name: "hf", key: "token" })]);

  it("the key's value as stored (base64), nothing decoded", () => {
    expect(tokenFromSecret(src, { data: { token: "aGZfc2VjcmV0", other: "eA==" } }, ROUTER)).toEqual({
      value: "aGZfc2VjcmV0",
    });
  });

  it("a missing Secret, key or empty value: a problem naming the Secret and key, and what the router does instead", () => {
    const none = tokenFromSecret(src, undefined, ROUTER);
    expect(none).toEqual({
      problem: {
        reason: "HubTokenMissing",
        message: expect.stringMatching(
          /^checkpoint\.tokenSecret: Secret hf not found in namespace ns; .*rel\/sy-router-hf-tokens gets no key ns_gated.*own HF_TOKEN/,
        ),
      },
    });
    for (const data of [{ other: "eA==" }, { token: "" }, undefined] as (Record<string, string> | undefined)[])
      expect(tokenFromSecret(src, { data }, ROUTER)).toMatchObject({
        problem: { reason: "HubTokenMissing", message: expect.stringContaining("Secret hf has no key token") },
      });
    expect(forbidden(src, ROUTER)).toMatchObject({
      reason: "HubTokenForbidden",
      message: expect.stringContaining("may not read Secret hf in namespace ns"),
    });
  });

  it("no message carries the value", () => {
    const secret = { data: { token: "aGZfc2VjcmV0" } };
    const other = tokenSources([hfPool("gated", "ns", { name: "hf", key: "nope" })])[0];
    const r = tokenFromSecret(other, secret, ROUTER);
    expect(JSON.stringify(r)).not.toContain("aGZfc2VjcmV0");
    expect(JSON.stringify(r)).not.toContain("hf_secret");
  });
});

describe("routerSecretApply", () => {
  it("exactly the tokens as data, sorted; no type or labels to take from a Secret the user made", () => {
    expect(
      routerSecretApply(
        ROUTER,
        new Map([
          ["b_x", "Yg=="],
          ["a_y", "YQ=="],
        ]),
      ),
    ).toEqual({
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "sy-router-hf-tokens", namespace: "rel" },
      data: { a_y: "YQ==", b_x: "Yg==" },
    });
  });
  it("no tokens: no data, which gives up (and so removes) every key applied before", () => {
    expect(routerSecretApply(ROUTER, new Map())).not.toHaveProperty("data");
  });
});

describe("routerSecretNeedsApply", () => {
  const want = new Map([["ns_a", "YQ=="]]);

  it("no Secret: create it only when there is something to hold", () => {
    expect(routerSecretNeedsApply(want, undefined, M)).toBe(true);
    expect(routerSecretNeedsApply(new Map(), undefined, M)).toBe(false);
  });

  it("as applied, with the user's own keys beside: nothing to do", () => {
    const live = {
      data: { ns_a: "YQ==", by_hand: "eA==" },
      metadata: { managedFields: [applied(["ns_a"]), applied(["by_hand"], "kubectl-create", "Update")] },
    };
    expect(routerSecretNeedsApply(want, live, M)).toBe(false);
    expect(appliedDataKeys(live, M)).toEqual(new Set(["ns_a"]));
  });

  it("a value edited by hand, a key missing, or a key of ours that should be gone: apply", () => {
    const owned = { managedFields: [applied(["ns_a"])] };
    expect(routerSecretNeedsApply(want, { data: { ns_a: "eA==" }, metadata: owned }, M)).toBe(true);
    expect(routerSecretNeedsApply(want, { data: {}, metadata: { managedFields: [] } }, M)).toBe(true);
    const stale = {
      data: { ns_a: "YQ==", ns_gone: "Zw==" },
      metadata: { managedFields: [applied(["ns_a", "ns_gone"])] },
    };
    expect(routerSecretNeedsApply(want, stale, M)).toBe(true);
    expect(routerSecretNeedsApply(new Map(), stale, M)).toBe(true);
  });

  it("the same value set by someone else (a restart finds the user's copy): take the key over once", () => {
    const live = { data: { ns_a: "YQ==" }, metadata: { managedFields: [applied(["ns_a"], "kubectl", "Update")] } };
    expect(routerSecretNeedsApply(want, live, M)).toBe(true);
  });
});

describe("the router Secret's owner (the operator's Deployment: helm uninstall deletes the Secret with it)", () => {
  const owner = { apiVersion: "apps/v1", kind: "Deployment", name: "sy-operator", uid: "dep-uid" };
  const tokens = new Map([["ns_a", "dG9r"]]);

  it("goes into the apply body, and an owned Secret without it is applied again", () => {
    expect(routerSecretApply(ROUTER, tokens, owner).metadata).toEqual({ ...ROUTER, ownerReferences: [owner] });
    const live = { data: { ns_a: "dG9r" }, metadata: { managedFields: [applied(["ns_a"])] } };
    expect(routerSecretNeedsApply(tokens, live, M)).toBe(false);
    expect(routerSecretNeedsApply(tokens, live, M, owner)).toBe(true);
    const owned = { ...live, metadata: { ...live.metadata, ownerReferences: [{ uid: "dep-uid" }] } };
    expect(routerSecretNeedsApply(tokens, owned, M, owner)).toBe(false);
  });

  it("only on a Secret the operator makes or holds alone: one with a user's key stays theirs", () => {
    expect(ownsRouterSecret(undefined, M, owner)).toBe(true);
    const ours = { data: { ns_a: "x" }, metadata: { managedFields: [applied(["ns_a"])] } };
    expect(ownsRouterSecret(ours, M, owner)).toBe(true);
    const shared = {
      data: { ns_a: "x", mine: "y" },
      metadata: { managedFields: [applied(["ns_a"]), applied(["mine"], "kubectl", "Update")] },
    };
    expect(ownsRouterSecret(shared, M, owner)).toBe(false);
    expect(
      ownsRouterSecret(
        { ...shared, metadata: { ...shared.metadata, ownerReferences: [{ uid: "dep-uid" }] } },
        M,
        owner,
      ),
    ).toBe(true);
  });
});

describe("newProblems", () => {
  const p = (message: string): TokenProblem => ({ reason: "HubTokenMissing", message });
  it("new or changed problems only; a solved one is forgotten, so its return is new again", () => {
    const now = new Map([
      ["ns/a", p("same")],
      ["ns/b", p("changed")],
      ["ns/c", p("new")],
    ]);
    const reported = new Map([
      ["ns/a", "same"],
      ["ns/b", "before"],
      ["ns/gone", "solved"],
    ]);
    expect(newProblems(reported, now).map(([k]) => k)).toEqual(["ns/b", "ns/c"]);
  });
});
