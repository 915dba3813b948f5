import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkpointSource, DEFAULT_QUEUE_DEPTH_QUERY } from "@switchyard/moe";
import { load } from "js-yaml";
import { describe, expect, it } from "vitest";
import { applyDefaults, type JsonSchema } from "../api/schema.js";
import {
  checkpointSchema,
  expertPoolSpecSchema,
  gatingSchema,
  loadSignalsSchema,
  modelSchema,
  rebalanceSchema,
  routingPolicySpecSchema,
  routingPolicyStatusSchema,
  workerSchema,
} from "../api/v1alpha1.js";
import { childLabels, isReservedPodKey } from "../controller/names.js";
import { ROUTER_CONFIG_KEY } from "../controller/policy-controller.js";
import { crdFiles, expertPoolCrd, routingPolicyCrd } from "./crds.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Every property path under a schema, with the schema found there. */
function walk(s: JsonSchema, path: string, out: [string, JsonSchema][]): [string, JsonSchema][] {
  out.push([path, s]);
  for (const [k, v] of Object.entries(s.properties ?? {})) walk(v, `${path}.${k}`, out);
  if (s.items) walk(s.items, `${path}[]`, out);
  if (s.additionalProperties) walk(s.additionalProperties, `${path}{}`, out);
  return out;
}

function openApi(crd: Record<string, unknown>): JsonSchema {
  // biome-ignore lint/suspicious/noExplicitAny: walking a generated document
  return (crd as any).spec.versions[0].schema.openAPIV3Schema;
}

describe("CRD YAML", () => {
  it("committed crds/*.yaml equal what the TypeScript schema generates (run `npm run gen:crds`)", () => {
    for (const [path, crd] of Object.entries(crdFiles())) {
      const committed = load(readFileSync(join(root, path), "utf8"));
      expect(committed, `${path} is stale: run npm run gen:crds`).toEqual(crd);
    }
  });

  it("every field under spec and status has a description; every list and map is bounded", () => {
    for (const crd of [expertPoolCrd(), routingPolicyCrd()]) {
      const fields = walk(openApi(crd), "", []).filter(([p]) => p.startsWith(".spec") || p.startsWith(".status"));
      expect(fields.length).toBeGreaterThan(20);
      for (const [p, s] of fields) {
        if (p.endsWith("{}") && s.anyOf) continue; // quantity values inside a described map
        expect(s.description, `${p} lacks a description`).toBeTruthy();
        if (s.type === "array") expect(s.maxItems, `${p} lacks maxItems`).toBeGreaterThan(0);
        if (s.additionalProperties) expect(s.maxProperties, `${p} lacks maxProperties`).toBeGreaterThan(0);
      }
    }
  });

  it("printer columns say what they show: Layers counts dense layers too; TopK/TopP/MaxK read status.effective", () => {
    // biome-ignore lint/suspicious/noExplicitAny: generated document
    const columns = (crd: any) =>
      crd.spec.versions[0].additionalPrinterColumns as { name: string; description: string; jsonPath: string }[];
    const layers = columns(expertPoolCrd()).find((c) => c.name === "Layers");
    expect(layers?.description).toMatch(/^Decoder layers, dense ones included/);
    expect(modelSchema.json.properties?.layers.description).toMatch(/^Decoder layers, dense ones included/);
    const rp = columns(routingPolicyCrd());
    expect(rp.map((c) => c.name)).toEqual(["Pool", "Ready", "TopK", "TopP", "MaxK", "Reason", "Age"]);
    for (const n of ["TopK", "TopP", "MaxK"])
      expect(rp.find((c) => c.name === n)?.jsonPath).toBe(
        `.status.effective.gating.${n[0].toLowerCase()}${n.slice(1)}`,
      );
  });

  it("declares status and scale subresources, category, short names that are not built in", () => {
    // biome-ignore lint/suspicious/noExplicitAny: generated document
    const xp = expertPoolCrd() as any;
    expect(xp.spec.versions[0].subresources.scale).toEqual({
      specReplicasPath: ".spec.replicas",
      statusReplicasPath: ".status.replicas",
      labelSelectorPath: ".status.selector",
    });
    // Short names of built-in kinds (kubectl api-resources on 1.34) must not be reused.
    const builtIn = new Set(
      "cs cm ep ev limits ns no pvc pv po podtemplates rc quota sa svc mwc vwc crd crds apisvc deploy ds rs sts hpa cj csr ing netpol pdb pc sc csinode csidrivers vac".split(
        " ",
      ),
    );
    for (const crd of [xp, routingPolicyCrd() as typeof xp]) {
      expect(crd.spec.names.categories).toEqual(["switchyard"]);
      expect(crd.spec.versions[0].subresources.status).toEqual({});
      for (const n of crd.spec.names.shortNames) expect(builtIn.has(n), n).toBe(false);
    }
  });

  it("every default validates against its own schema's enum and bounds", () => {
    for (const crd of [expertPoolCrd(), routingPolicyCrd()]) {
      for (const [p, s] of walk(openApi(crd), "", [])) {
        if (s.default === undefined) continue;
        if (s.enum) expect(s.enum, p).toContain(s.default);
        if (typeof s.default === "number") {
          if (s.minimum !== undefined) expect(s.default, p).toBeGreaterThanOrEqual(s.minimum);
          if (s.maximum !== undefined) expect(s.default, p).toBeLessThanOrEqual(s.maximum);
        }
      }
    }
  });
});

describe("applyDefaults mirrors structural defaulting", () => {
  it("fills nested defaults under objects defaulted to {}", () => {
    const spec = applyDefaults(expertPoolSpecSchema.json, {
      model: {
        architecture: "mixtral",
        layers: 2,
        experts: 8,
        topK: 2,
        hiddenSize: 64,
        intermediateSize: 128,
        checkpoint: { uri: "hf://x" },
      },
    }) as Record<string, Record<string, unknown>>;
    expect(spec.replicas).toBe(2);
    expect(spec.worker).toMatchObject({
      gpusPerWorker: 1,
      backend: "auto",
      image: "ghcr.io/switchyard-dev/switchyard-worker:0.1.0-cuda",
    });
    expect(spec.cache).toEqual({ hostTier: { enabled: false } });
    expect(spec.placement).toEqual({ strategy: "balanced", redundantExperts: 0, sharedExperts: "Workers" });
    expect(spec.model).toMatchObject({ dtype: "bfloat16", sharedExperts: 0 });
  });

  it("keeps given values", () => {
    const spec = applyDefaults(routingPolicySpecSchema.json, {
      poolRef: { name: "p" },
      batching: { maxBatchTokens: 512 },
    }) as Record<string, Record<string, unknown>>;
    expect(spec.batching).toEqual({
      enabled: true,
      maxBatchTokens: 512,
      maxWaitMs: 2,
      maxQueueTokens: 65536,
      flushesInFlight: 2,
    });
    expect(spec.gating).toEqual({ overflow: "drop" });
  });
});

describe("placement.rebalance.window takes what Prometheus' duration parser takes", () => {
  // prometheus/common model.ParseDuration: units y, w, d, h, m, s, ms in that order, each at most once. The API
  // server matches the pattern with Go's RE2; this pattern means the same in JavaScript.
  const window = rebalanceSchema.json.properties?.window as JsonSchema;
  const valid = (s: string) => s.length >= (window.minLength ?? 0) && new RegExp(window.pattern ?? "").test(s);

  it.each(["10m", "1h30m", "90s", "1y2w3d4h5m6s7ms", "500ms", "1m500ms", "2d"])("accepts %s", (s) => {
    expect(valid(s)).toBe(true);
  });

  it.each(["30s1m", "5m5m", "1m1h", "10ms1s", "", "10", "m", "10 minutes", "1.5h", "-5m", "10M"])("refuses %j", (s) => {
    expect(valid(s)).toBe(false);
  });
});

describe("descriptions say what the code does", () => {
  const prop = (s: JsonSchema, k: string) => s.properties?.[k] as JsonSchema;

  it("worker.queueCapacity counts the worker's waiting batches (--queue-capacity), defaulting as the worker does", () => {
    const q = prop(workerSchema.json, "queueCapacity");
    // The worker's own default (expert-worker/src/config.ts: int("queue-capacity", 64, 0)); the operator passes
    // this field as --queue-capacity (desired.ts workerArgs), so an unset field must mean what the worker means.
    const worker = readFileSync(join(root, "expert-worker/src/config.ts"), "utf8");
    const workerDefault = Number(/int\("queue-capacity", (\d+)/.exec(worker)?.[1]);
    expect(workerDefault).toBeGreaterThan(0);
    expect(q.default).toBe(workerDefault);
    expect(q.description).toMatch(/^Batches .*--queue-capacity/);
    expect(q.description).not.toMatch(/^Tokens/);
    // pools stored with the old default (65536, filled in by the API server) stay valid
    expect(q.minimum).toBeLessThanOrEqual(1);
    expect(q.maximum).toBeGreaterThanOrEqual(65536);
  });

  it("RoutingPolicy status.configMap names the router ConfigMap as namespace/name and its real key", () => {
    const d = prop(routingPolicyStatusSchema.json, "configMap").description ?? "";
    expect(d).toContain(`key ${ROUTER_CONFIG_KEY}`);
    expect(d).toContain("<namespace>/<name>");
    expect(d).not.toContain("policy.json");
  });

  it("gating.maxK's unset value is the router's: max(topK, 2 × model topK), capped at the pool's experts", () => {
    const d = prop(gatingSchema.json, "maxK").description ?? "";
    expect(d).toContain("max(topK, 2 × the model's topK)");
    expect(d).toMatch(/at most the pool's experts/);
    expect(d).not.toContain("unset = 2 × topK");
  });

  it("worker.image defaults to the CUDA image, since gpusPerWorker defaults to a GPU", () => {
    const w = workerSchema.json.properties!;
    expect(w.gpusPerWorker.default).toBeGreaterThanOrEqual(1);
    expect(w.image.default).toMatch(/^ghcr\.io\/switchyard-dev\/switchyard-worker:[\w.]+-cuda$/);
    expect(w.image.description).toContain("backend auto falls back to CPU");
  });

  it("model.dtype and model.hiddenSize say that nothing reads them (workers and router take the checkpoint's)", () => {
    const m = modelSchema.json.properties!;
    // Neither the operator's pod template nor the router config carries them (desired.ts, routing.ts).
    for (const f of ["desired.ts", "routing.ts", "router-config-fit.ts"]) {
      const src = readFileSync(join(root, "operator/src/controller", f), "utf8");
      expect(src, f).not.toMatch(/model\.(dtype|hiddenSize)/);
    }
    expect(m.dtype.description).toContain("recorded for users and tools");
    expect(m.dtype.description).toContain("in the dtype of the hidden states its request sends");
    expect(m.hiddenSize.description).toContain("recorded for users and tools");
    expect(m.hiddenSize.description).toContain("config.json");
  });

  it("loadSignals.timeoutMs has no default, so refreshMs < 2000 alone passes its CEL rule (router: min(2000, refreshMs))", () => {
    const t = prop(loadSignalsSchema.json, "timeoutMs");
    expect(t.default).toBeUndefined();
    expect(t.description).toContain("min(2000, refreshMs)");
    const rules = loadSignalsSchema.json["x-kubernetes-validations"]?.map((v) => v.rule);
    expect(rules).toContain("!has(self.timeoutMs) || self.timeoutMs <= self.refreshMs");
    expect(rules).not.toContain("self.timeoutMs <= self.refreshMs");
    // and defaulting a policy that sets only refreshMs leaves timeoutMs unset for the router to fill in
    const spec = applyDefaults(routingPolicySpecSchema.json, {
      poolRef: { name: "p" },
      loadSignals: { refreshMs: 1000 },
    }) as { loadSignals: Record<string, unknown> };
    expect(spec.loadSignals.timeoutMs).toBeUndefined();
  });

  it("model.architecture: the operator's alone; the checkpoint's model_type picks key names and gate", () => {
    const d = prop(modelSchema.json, "architecture").description ?? "";
    expect(d).toContain("passes it to neither the workers nor the router");
    expect(d).not.toContain("selects expert key names");
    // custom is the model_type packages/moe reads as that family (spec.ts MODEL_TYPE)
    const spec = readFileSync(join(root, "packages/moe/src/spec.ts"), "utf8");
    const custom = /const MODEL_TYPE\b[^{]*\{[^}]*\bcustom: "(\w+)"/.exec(spec)?.[1];
    expect(custom).toBeDefined();
    expect(d).toContain(`custom: a checkpoint of model_type ${custom}`);
  });

  it("loadSignals.queries: an unset one is the built-in default, which the description gives (no chart value)", () => {
    const d = prop(loadSignalsSchema.json, "queries").description ?? "";
    expect(d).toContain(DEFAULT_QUEUE_DEPTH_QUERY);
    expect(d).not.toContain("the chart's defaults");
  });

  it("checkpoint.tokenSecret only with an hf:// uri: the fetcher sends the token to the Hub and nowhere else", () => {
    const env = { HF_TOKEN: "hf_x" };
    expect(checkpointSource("hf://org/m", env).headers).toEqual({ authorization: "Bearer hf_x" });
    expect(checkpointSource("https://models.example.com/m/", env).headers).toEqual({});
    expect(checkpointSchema.json["x-kubernetes-validations"]?.map((v) => v.rule)).toContain(
      "!has(self.tokenSecret) || (has(self.uri) && self.uri.startsWith('hf://'))",
    );
    expect(prop(checkpointSchema.json, "tokenSecret").description).toMatch(/^With an hf:\/\/ uri only/);
  });

  it("loadSignals.prometheusUrl needs a host after the scheme", () => {
    const re = new RegExp(prop(loadSignalsSchema.json, "prometheusUrl").pattern ?? "^$");
    for (const ok of ["http://prometheus:9090", "https://prom.example.com/prometheus", "http://10.0.0.1"])
      expect(re.test(ok), ok).toBe(true);
    for (const bad of ["http://", "https:///api", "prometheus:9090", "ftp://p"]) expect(re.test(bad), bad).toBe(false);
  });

  it("checkpoint.endpoint: an http(s) URL, described as the init container's HF_ENDPOINT", () => {
    const e = prop(checkpointSchema.json, "endpoint");
    expect(e.description).toContain("HF_ENDPOINT");
    expect(e.description).toContain("fetch-checkpoint");
    const re = new RegExp(e.pattern ?? "^$");
    for (const ok of ["https://hf-mirror.example.com", "http://mirror.svc:8080/hf", "https://m.example/"])
      expect(re.test(ok), ok).toBe(true);
    for (const bad of ["hf-mirror.example.com", "ftp://m", "https://", "https:// m", "hf://org/name"])
      expect(re.test(bad), bad).toBe(false);
    expect(checkpointSchema.json["x-kubernetes-validations"]?.map((v) => v.rule)).toContain(
      "!has(self.endpoint) || (has(self.uri) && self.uri.startsWith('hf://'))",
    );
  });
});

describe("worker pod fields", () => {
  const w = workerSchema.json.properties!;

  it("podLabels refuses every label the operator puts on worker pods (selector, ownership), by the CEL rule", () => {
    const rules = (w.podLabels["x-kubernetes-validations"] ?? []).map((v) => v.rule).join("\n");
    for (const k of Object.keys(childLabels("p"))) {
      expect(isReservedPodKey(k), k).toBe(true);
      // each key either listed in the rule or under the prefix it refuses
      expect(rules.includes(`'${k}'`) || rules.includes(`k.startsWith('${k.slice(0, k.indexOf("/") + 1)}')`), k).toBe(
        true,
      );
    }
    expect(isReservedPodKey("cost-center")).toBe(false);
    expect(isReservedPodKey("app.kubernetes.io/part-of")).toBe(false);
    // annotations: only the operator's prefix (model-hash, metrics-pool)
    expect(isReservedPodKey("switchyard.dev/model-hash", true)).toBe(true);
    expect(isReservedPodKey("app.kubernetes.io/name", true)).toBe(false);
  });

  it("quantities are never negative: the string pattern and an integer's minimum", () => {
    const requests = w.resources.properties?.requests as JsonSchema;
    const q = requests.additionalProperties as JsonSchema;
    const re = new RegExp(q.pattern ?? "^$");
    for (const ok of ["1", "500m", "16Gi", "+2", "1e3", "0.5", ".5", "1E-3"]) expect(re.test(ok), ok).toBe(true);
    for (const bad of ["-1Gi", "-1", "-0.5", "1 Gi", "Gi"]) expect(re.test(bad), bad).toBe(false);
    expect(q.minimum).toBe(0);
    const size = checkpointSchema.json.properties?.downloadSize as JsonSchema;
    expect(size.pattern).toBe(q.pattern);
  });
});

describe("ExpertPool metadata.name", () => {
  it("is constrained in the root schema, so a refusal names metadata.name (a root CEL rule reports <nil>)", () => {
    const root = openApi(expertPoolCrd());
    expect(root["x-kubernetes-validations"]).toBeUndefined();
    expect(root.properties?.metadata).toEqual({
      type: "object",
      properties: { name: { type: "string", maxLength: 52, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" } },
    });
  });
});
