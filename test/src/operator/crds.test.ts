// Must show (issue 5): the CRDs install with kubectl apply, `kubectl explain` reads the descriptions, and invalid
// ExpertPools and RoutingPolicies are refused by the API server itself (schema and CEL), creating nothing.
import { describeWithCluster } from "@switchyard/test/cluster/vitest";
import { beforeAll, expect, it } from "vitest";
import { waitUntil } from "../cluster/index.js";
import { pool } from "./helpers.js";

const NS = "default";

function rp(spec: Record<string, unknown>, name = "rp") {
  return { apiVersion: "switchyard.dev/v1alpha1", kind: "RoutingPolicy", metadata: { name, namespace: NS }, spec };
}

function withModel(model: Record<string, unknown>, rest: Record<string, unknown> = {}) {
  return pool("bad", NS, { model, ...rest });
}

/** [what, manifest, text the API server's refusal must contain] */
const INVALID: [string, unknown, string][] = [
  ["topK above experts (CEL)", withModel({ topK: 9 }), "model.topK must be <= model.experts"],
  [
    "two checkpoint sources (CEL)",
    withModel({ checkpoint: { hostPath: { path: "/m" }, uri: "hf://org/m" } }),
    "exactly one of checkpoint.pvc, checkpoint.hostPath, checkpoint.uri must be set",
  ],
  ["no checkpoint source (CEL)", withModel({ checkpoint: {} }), "exactly one of checkpoint.pvc"],
  [
    "more redundant copies than replicas can hold (CEL)",
    pool("bad", NS, { replicas: 2, placement: { redundantExperts: 9 } }),
    "placement.redundantExperts must be <= model.experts * (replicas - 1)",
  ],
  [
    "cache smaller than the workers' share (CEL)",
    pool("bad", NS, { replicas: 2, cache: { residentExperts: 7 } }),
    "cache.residentExperts * replicas must hold every expert slot",
  ],
  [
    "shared expert width not a multiple of intermediateSize, placed on workers (CEL)",
    withModel({ architecture: "qwen2-moe", sharedExperts: 1, sharedIntermediateSize: 200 }),
    "model.sharedIntermediateSize must be a multiple of model.intermediateSize",
  ],
  [
    "cache without room for the shared slices (CEL)",
    pool("bad", NS, {
      model: { architecture: "deepseek-v3", sharedExperts: 1 },
      replicas: 2,
      cache: { residentExperts: 8 },
    }),
    "cache.residentExperts * replicas must hold every expert slot",
  ],
  [
    "every layer dense by firstDenseLayers (CEL)",
    withModel({ firstDenseLayers: 2 }),
    "model.firstDenseLayers must be < model.layers",
  ],
  ["a dense layer past model.layers (CEL)", withModel({ denseLayers: [2] }), "model.denseLayers must be layer indices"],
  [
    "no layer with experts left (CEL)",
    withModel({ firstDenseLayers: 1, denseLayers: [1] }),
    "model.firstDenseLayers and model.denseLayers leave no layer with experts",
  ],
  [
    "cache short of the MoE layers' slots, dense layers aside (CEL)",
    pool("bad", NS, { model: { layers: 4, firstDenseLayers: 1, denseLayers: [0, 2] }, cache: { residentExperts: 7 } }),
    "cache.residentExperts * replicas must hold every expert slot",
  ],
  [
    "cuda backend without GPUs (CEL)",
    pool("bad", NS, { worker: { gpusPerWorker: 0, backend: "cuda" } }),
    "worker.backend cuda needs worker.gpusPerWorker >= 1",
  ],
  [
    "rebalance without http(s) Prometheus URL (schema pattern)",
    pool("bad", NS, { placement: { rebalance: { prometheusUrl: "prometheus:9090" } } }),
    "spec.placement.rebalance.prometheusUrl in body should match",
  ],
  [
    "rebalance window that is not a Prometheus duration (schema pattern)",
    pool("bad", NS, { placement: { rebalance: { prometheusUrl: "http://p:9090", window: "10 minutes" } } }),
    "spec.placement.rebalance.window in body should match",
  ],
  [
    "rebalance window with units out of Prometheus' order (schema pattern)",
    pool("bad", NS, { placement: { rebalance: { prometheusUrl: "http://p:9090", window: "30s1m" } } }),
    "spec.placement.rebalance.window in body should match",
  ],
  [
    "rebalance window with a unit twice (schema pattern)",
    pool("bad", NS, { placement: { rebalance: { prometheusUrl: "http://p:9090", window: "5m5m" } } }),
    "spec.placement.rebalance.window in body should match",
  ],
  [
    "rebalance window of zero (CEL)",
    pool("bad", NS, { placement: { rebalance: { prometheusUrl: "http://p:9090", window: "0m" } } }),
    "placement.rebalance.window must be longer than zero",
  ],
  [
    "rebalance interval below 30 s (schema minimum)",
    pool("bad", NS, { placement: { rebalance: { prometheusUrl: "http://p:9090", intervalSeconds: 10 } } }),
    "spec.placement.rebalance.intervalSeconds: Invalid value: 10: spec.placement.rebalance.intervalSeconds in body should be greater than or equal to 30",
  ],
  [
    "rebalance query timeout not below the interval (CEL)",
    pool("bad", NS, { placement: { rebalance: { intervalSeconds: 60, timeoutSeconds: 60 } } }),
    "placement.rebalance.timeoutSeconds must be < placement.rebalance.intervalSeconds",
  ],
  [
    "rebalance minImprovement above 1 (schema maximum)",
    pool("bad", NS, { placement: { rebalance: { minImprovement: 1.5 } } }),
    "spec.placement.rebalance.minImprovement in body should be less than or equal to 1",
  ],
  [
    "rebalance of a contiguous layout without redundant slots (CEL)",
    pool("bad", NS, { placement: { strategy: "contiguous", rebalance: { prometheusUrl: "http://p:9090" } } }),
    "placement.rebalance has no effect with strategy contiguous and redundantExperts 0",
  ],
  // Pod-template fields the operator copies into the StatefulSet: the API server would refuse that StatefulSet,
  // long after the pool was accepted, so the pool itself is refused.
  [
    "toleration Exists with a value (CEL)",
    pool("bad", NS, { worker: { tolerations: [{ key: "gpu", operator: "Exists", value: "yes" }] } }),
    "worker.tolerations: value must be empty when operator is Exists",
  ],
  [
    "toleration without a key that is not Exists (CEL)",
    pool("bad", NS, { worker: { tolerations: [{ operator: "Equal", value: "yes" }] } }),
    "worker.tolerations: operator must be Exists when key is empty",
  ],
  [
    "toleration with tolerationSeconds that is not NoExecute (CEL)",
    pool("bad", NS, { worker: { tolerations: [{ key: "gpu", effect: "NoSchedule", tolerationSeconds: 60 }] } }),
    "worker.tolerations: tolerationSeconds needs effect NoExecute",
  ],
  [
    "toleration key that is not a label key (schema pattern)",
    pool("bad", NS, { worker: { tolerations: [{ key: "no spaces", operator: "Exists" }] } }),
    "spec.worker.tolerations[0].key in body should match",
  ],
  [
    "nodeSelector value that is not a label value (schema pattern)",
    pool("bad", NS, { worker: { nodeSelector: { "gpu.example.com/model": "H200 SXM" } } }),
    "spec.worker.nodeSelector.gpu.example.com/model in body should match",
  ],
  [
    "nodeSelector key that is not a label key (CEL)",
    pool("bad", NS, { worker: { nodeSelector: { "gpu model": "h200" } } }),
    "worker.nodeSelector keys must be label keys",
  ],
  [
    "priorityClassName that is not a DNS name (schema pattern)",
    pool("bad", NS, { worker: { priorityClassName: "High_Priority" } }),
    "spec.worker.priorityClassName in body should match",
  ],
  ["unknown architecture (schema enum)", withModel({ architecture: "gpt" }), 'Unsupported value: "gpt"'],
  ["zero layers (schema minimum)", withModel({ layers: 0 }), "should be greater than or equal to 1"],
  [
    "missing hiddenSize (schema required)",
    withModel({ hiddenSize: undefined }),
    "spec.model.hiddenSize: Required value",
  ],
  // metadata.name is constrained in the root schema: the refusal names metadata.name, not `<nil>` as a root CEL
  // rule's would.
  [
    "name too long for pod names (schema on metadata.name)",
    { ...pool("bad", NS), metadata: { name: "x".repeat(53), namespace: NS } },
    "metadata.name: Too long",
  ],
  [
    "name that is not a DNS label (schema on metadata.name)",
    { ...pool("bad", NS), metadata: { name: "dots.name", namespace: NS } },
    'metadata.name: Invalid value: "dots.name": metadata.name in body should match',
  ],
  // Quantities and paths the StatefulSet would be refused for, long after the pool was accepted.
  [
    "negative memory request (schema pattern)",
    pool("bad", NS, { worker: { resources: { requests: { memory: "-1Gi" } } } }),
    'spec.worker.resources.requests.memory: Invalid value: "-1Gi"',
  ],
  [
    "negative integer cpu limit (schema minimum)",
    pool("bad", NS, { worker: { resources: { limits: { cpu: -1 } } } }),
    "spec.worker.resources.limits.cpu in body should be greater than or equal to 0",
  ],
  [
    "negative downloadSize (schema pattern)",
    withModel({ checkpoint: { uri: "hf://org/m", downloadSize: "-100Gi" } }),
    'spec.model.checkpoint.downloadSize: Invalid value: "-100Gi"',
  ],
  [
    "cpu request above its limit (CEL, quantity library)",
    pool("bad", NS, { worker: { resources: { requests: { cpu: 4 }, limits: { cpu: "2" } } } }),
    'spec.worker.resources.requests: Invalid value: "object": worker.resources.requests must be <= worker.resources.limits',
  ],
  [
    "memory request above its limit in other units (CEL, quantity library)",
    pool("bad", NS, { worker: { resources: { requests: { memory: "5G" }, limits: { memory: "4Gi" } } } }),
    "worker.resources.requests must be <= worker.resources.limits",
  ],
  [
    "a GPU request in worker.resources with gpusPerWorker 0 (CEL; core/v1 would refuse it for want of a limit)",
    pool("bad", NS, { worker: { gpusPerWorker: 0, resources: { requests: { "nvidia.com/gpu": "1" } } } }),
    'spec.worker.resources.requests: Invalid value: "object": worker.resources must not set nvidia.com/gpu: the operator sets it from worker.gpusPerWorker',
  ],
  [
    "a GPU limit in worker.resources (CEL; the operator would overwrite it from gpusPerWorker)",
    pool("bad", NS, { worker: { gpusPerWorker: 2, resources: { limits: { "nvidia.com/gpu": "1" } } } }),
    'spec.worker.resources.limits: Invalid value: "object": worker.resources must not set nvidia.com/gpu',
  ],
  [
    "pvc subPath with a '..' element (CEL)",
    withModel({ checkpoint: { pvc: { claimName: "w", subPath: "a/../../etc" } } }),
    'spec.model.checkpoint.pvc.subPath: Invalid value: "object": checkpoint.pvc.subPath must be a relative path',
  ],
  [
    "absolute pvc subPath (CEL)",
    withModel({ checkpoint: { pvc: { claimName: "w", subPath: "/etc" } } }),
    'spec.model.checkpoint.pvc.subPath: Invalid value: "object": checkpoint.pvc.subPath must be a relative path',
  ],
  // Worker pod identity and metadata.
  [
    "podLabels setting the StatefulSet's selector label (CEL)",
    pool("bad", NS, { worker: { podLabels: { "app.kubernetes.io/component": "other" } } }),
    'spec.worker.podLabels: Invalid value: "object": worker.podLabels must not set the operator\'s own labels',
  ],
  [
    "podLabels setting the managed-by label the operator finds its pods by (CEL)",
    pool("bad", NS, { worker: { podLabels: { "app.kubernetes.io/managed-by": "helm" } } }),
    "worker.podLabels must not set the operator's own labels",
  ],
  [
    "podLabels under the operator's prefix (CEL)",
    pool("bad", NS, { worker: { podLabels: { "switchyard.dev/pool": "other" } } }),
    "worker.podLabels must not set the operator's own labels",
  ],
  [
    "podLabels key that is not a label key (CEL)",
    pool("bad", NS, { worker: { podLabels: { "cost center": "a" } } }),
    "worker.podLabels keys must be label keys",
  ],
  [
    "podLabels value that is not a label value (schema pattern)",
    pool("bad", NS, { worker: { podLabels: { team: "ML team" } } }),
    "spec.worker.podLabels.team in body should match",
  ],
  [
    "podAnnotations under the operator's prefix (CEL)",
    pool("bad", NS, { worker: { podAnnotations: { "switchyard.dev/model-hash": "x" } } }),
    'spec.worker.podAnnotations: Invalid value: "object": worker.podAnnotations must not set switchyard.dev/* keys',
  ],
  [
    "podAnnotations key that is not a qualified name (CEL)",
    pool("bad", NS, { worker: { podAnnotations: { "not/a/key": "x" } } }),
    "worker.podAnnotations keys must be qualified names",
  ],
  [
    "the same image pull secret twice (list map)",
    pool("bad", NS, { worker: { imagePullSecrets: [{ name: "regcred" }, { name: "regcred" }] } }),
    "spec.worker.imagePullSecrets[1]: Duplicate value",
  ],
  [
    "serviceAccountName that is not a DNS name (schema pattern)",
    pool("bad", NS, { worker: { serviceAccountName: "Workers_SA" } }),
    "spec.worker.serviceAccountName in body should match",
  ],
  [
    "bad checkpoint URI scheme (schema pattern)",
    withModel({ checkpoint: { uri: "ftp://x" } }),
    "spec.model.checkpoint.uri in body should match",
  ],
  [
    "checkpoint downloadSize without a uri (CEL)",
    withModel({ checkpoint: { hostPath: { path: "/m" }, downloadSize: "10Gi" } }),
    "checkpoint.downloadSize goes with checkpoint.uri",
  ],
  [
    "checkpoint tokenSecret without a uri (CEL)",
    withModel({ checkpoint: { hostPath: { path: "/m" }, tokenSecret: { name: "hf" } } }),
    "checkpoint.tokenSecret goes with an hf:// checkpoint.uri",
  ],
  [
    // the token is sent to the Hub only (packages/moe fetch/uri.ts): never handed to another host, nor silently unused
    "checkpoint tokenSecret with an https:// uri (CEL)",
    withModel({ checkpoint: { uri: "https://models.example.com/m/", tokenSecret: { name: "hf" } } }),
    'spec.model.checkpoint.tokenSecret: Invalid value: "object": checkpoint.tokenSecret goes with an hf:// checkpoint.uri',
  ],
  [
    "checkpoint endpoint that is not an http(s) URL (schema pattern)",
    withModel({ checkpoint: { uri: "hf://org/m", endpoint: "hf-mirror.example.com" } }),
    "spec.model.checkpoint.endpoint in body should match",
  ],
  [
    "checkpoint endpoint without an hf:// uri (CEL)",
    withModel({ checkpoint: { uri: "https://models.example.com/m", endpoint: "https://hf-mirror.example.com" } }),
    "checkpoint.endpoint goes with an hf:// checkpoint.uri",
  ],
  [
    "checkpoint uri on S3 (not downloadable as is: a presigned https URL or a PVC)",
    withModel({ checkpoint: { uri: "s3://bucket/mixtral" } }),
    "spec.model.checkpoint.uri in body should match",
  ],
  ["RoutingPolicy without poolRef (schema required)", rp({}), "spec.poolRef: Required value"],
  [
    "RoutingPolicy maxK without topP (CEL)",
    rp({ poolRef: { name: "p" }, gating: { maxK: 4 } }),
    "gating.maxK only applies with gating.topP",
  ],
  [
    "RoutingPolicy spill without capacityFactor (CEL)",
    rp({ poolRef: { name: "p" }, gating: { overflow: "spill" } }),
    "gating.overflow spill or queue needs gating.capacityFactor",
  ],
  [
    "RoutingPolicy queue smaller than a batch (CEL)",
    rp({ poolRef: { name: "p" }, batching: { maxBatchTokens: 1024, maxQueueTokens: 512 } }),
    "batching.maxQueueTokens must be >= batching.maxBatchTokens",
  ],
  [
    "RoutingPolicy with no flush allowed in flight (schema minimum)",
    rp({ poolRef: { name: "p" }, batching: { flushesInFlight: 0 } }),
    "spec.batching.flushesInFlight in body should be greater than or equal to 1",
  ],
  [
    "RoutingPolicy staleness below refresh (CEL)",
    rp({ poolRef: { name: "p" }, loadSignals: { refreshMs: 5000, stalenessMs: 1000 } }),
    "loadSignals.stalenessMs must be >= loadSignals.refreshMs",
  ],
  [
    "RoutingPolicy timeout longer than a refresh round, both given (CEL)",
    rp({ poolRef: { name: "p" }, loadSignals: { refreshMs: 1000, timeoutMs: 3000 } }),
    "loadSignals.timeoutMs must be <= loadSignals.refreshMs",
  ],
  [
    "RoutingPolicy Prometheus URL without a host (schema pattern)",
    rp({ poolRef: { name: "p" }, loadSignals: { prometheusUrl: "http://" } }),
    "spec.loadSignals.prometheusUrl in body should match",
  ],
  [
    "RoutingPolicy topP above 1 (schema maximum)",
    rp({ poolRef: { name: "p" }, gating: { topP: 1.5 } }),
    "should be less than or equal to 1",
  ],
];

describeWithCluster(
  "CRDs on a real API server",
  { withKwok: false, withControllerManager: false, withScheduler: false },
  (cluster) => {
    beforeAll(async () => {
      await cluster().kubectl(["apply", "-f", "crds/"]);
      await cluster().kubectl([
        "wait",
        "--for=condition=Established",
        "crd/expertpools.switchyard.dev",
        "crd/routingpolicies.switchyard.dev",
      ]);
    }, 60_000);

    it("installs with kubectl apply; kubectl explain shows the descriptions", async () => {
      // The OpenAPI document that explain reads is republished a few seconds after a CRD is established.
      let explain = { code: 1, stdout: "", stderr: "" };
      await waitUntil(
        async () => {
          explain = await cluster().kubectl(["explain", "expertpool.spec.model"], { check: false });
          return explain.code === 0;
        },
        { timeoutMs: 60_000, intervalMs: 1000, what: `kubectl explain to know ExpertPool (${explain.stderr})` },
      );
      expect(explain.stdout).toContain("The MoE model whose routed experts this pool serves.");
      expect(explain.stdout).toContain("Experts each token is routed to");
      const field = await cluster().kubectl(["explain", "routingpolicy.spec.gating.overflow"]);
      expect(field.stdout).toContain("Assignments over capacity");
      const res = await cluster().kubectl(["api-resources", "--api-group=switchyard.dev", "-o", "wide"]);
      expect(res.stdout).toMatch(/expertpools\s+xp,xpool\s+switchyard\.dev\/v1alpha1\s+true\s+ExpertPool/);
      expect(res.stdout).toMatch(/routingpolicies\s+xrp,rpol/);
    });

    it("defaults a minimal ExpertPool and lists it by short name and category", async () => {
      const c = cluster();
      await c.kubectl(["apply", "-f", "-"], { input: JSON.stringify(pool("ok", NS)) });
      const got = JSON.parse((await c.kubectl(["get", "xp", "ok", "-o", "json"])).stdout);
      expect(got.spec.placement).toEqual({ strategy: "balanced", redundantExperts: 0, sharedExperts: "Workers" });
      // placement.rebalance is opt-in; once given, its defaults fill in.
      const withRebalance = pool("rb", NS, { placement: { rebalance: { prometheusUrl: "http://prometheus:9090" } } });
      await c.kubectl(["apply", "-f", "-"], { input: JSON.stringify(withRebalance) });
      const rb = JSON.parse((await c.kubectl(["get", "xp", "rb", "-o", "json"])).stdout);
      expect(rb.spec.placement.rebalance).toEqual({
        prometheusUrl: "http://prometheus:9090",
        window: "10m",
        intervalSeconds: 300,
        timeoutSeconds: 10,
        minImprovement: 0.05,
      });
      await c.kubectl(["delete", "xp", "rb"]);
      expect(got.spec.worker).toMatchObject({
        backend: "auto",
        gpusPerWorker: 1,
        // a minimal pool requests a GPU, so its default image is the CUDA one
        image: "ghcr.io/switchyard-dev/switchyard-worker:0.1.0-cuda",
        queueCapacity: 64, // batches, the worker's own default
      });
      // the former default stays valid for pools stored with it; a Hub mirror for an hf:// checkpoint is accepted
      const old = pool("old", NS, {
        model: { checkpoint: { uri: "hf://org/m", endpoint: "http://hf-mirror.mirrors.svc:8080/hf" } },
        worker: { queueCapacity: 65536 },
      });
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(old) });
      const oldGot = JSON.parse((await c.kubectl(["get", "xp", "old", "-o", "json"])).stdout);
      expect(oldGot.spec.worker.queueCapacity).toBe(65536);
      expect(oldGot.spec.model.checkpoint.endpoint).toBe("http://hf-mirror.mirrors.svc:8080/hf");
      await c.kubectl(["delete", "xp", "old"]);
      expect((await c.kubectl(["get", "switchyard", "-o", "name"])).stdout).toContain("expertpool.switchyard.dev/ok");
      const wide = await c.kubectl(["get", "xp", "-o", "wide"]);
      expect(wide.stdout).toMatch(
        /NAME\s+READY\s+REPLICAS\s+AVAILABLE\s+MODEL\s+EXPERTS\s+LAYERS\s+PLAN\s+REASON\s+AGE/,
      );
      await c.kubectl(["delete", "xp", "ok"]);
    });

    it(`refuses ${INVALID.length} invalid manifests with the schema or CEL message, creating nothing`, async () => {
      const c = cluster();
      expect(INVALID.length).toBeGreaterThanOrEqual(10);
      for (const [what, manifest, message] of INVALID) {
        const r = await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(manifest), check: false });
        expect(r.code, `${what} was accepted`).not.toBe(0);
        expect(r.stderr, what).toContain(message);
      }
      const left = await c.kubectl(["get", "expertpools,routingpolicies", "-A", "-o", "name"]);
      expect(left.stdout.trim()).toBe("");
    });

    it("accepts the tolerations, node selectors and priority classes core/v1 accepts", async () => {
      const c = cluster();
      const worker = {
        tolerations: [
          { operator: "Exists" },
          { key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" },
          { key: "dedicated", value: "moe", effect: "NoExecute", tolerationSeconds: 300 },
          { key: "example.com/Pool_A.1", operator: "Equal", value: "" },
        ],
        nodeSelector: { "nvidia.com/gpu.product": "NVIDIA-H200", "kubernetes.io/hostname": "node_1.a", zone: "" },
        priorityClassName: "system-node-critical",
      };
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(pool("tolerant", NS, { worker })) });
      await c.kubectl(["delete", "xp", "tolerant"]);
    });

    it("accepts worker pod identity and metadata, quantities within their limits and relative subPaths", async () => {
      const c = cluster();
      const worker = {
        imagePullSecrets: [{ name: "regcred" }, { name: "mirror.creds" }],
        serviceAccountName: "moe-workers",
        podLabels: { "cost-center": "inference", "sidecar.istio.io/inject": "false", "app.kubernetes.io/part-of": "" },
        podAnnotations: {
          "sidecar.istio.io/inject": "false",
          "example.com/note": "a, b = c",
          "kubectl.kubernetes.io/x": "",
        },
        // equal in other units, an integer against a string, and a request with no limit (or the reverse)
        resources: {
          requests: { cpu: "500m", memory: "1Gi", "ephemeral-storage": "10Gi" },
          limits: { cpu: 1, memory: "1024Mi", "example.com/fpga": "+1" },
        },
      };
      const ok = pool("podmeta", NS, {
        worker,
        model: { checkpoint: { pvc: { claimName: "w", subPath: "models/a..b/mixtral" } } },
      });
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(ok) });
      const got = JSON.parse((await c.kubectl(["get", "xp", "podmeta", "-o", "json"])).stdout);
      expect(got.spec.worker).toMatchObject({
        imagePullSecrets: worker.imagePullSecrets,
        serviceAccountName: "moe-workers",
        podLabels: worker.podLabels,
        podAnnotations: worker.podAnnotations,
      });
      // an empty list (no pull secrets, not the operator's default) is kept as given
      const none = pool("nosecrets", NS, { worker: { imagePullSecrets: [] } });
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(none) });
      const n = JSON.parse((await c.kubectl(["get", "xp", "nosecrets", "-o", "json"])).stdout);
      expect(n.spec.worker.imagePullSecrets).toEqual([]);
      // a 52-character name is the longest accepted
      const long = { ...pool("x", NS), metadata: { name: "x".repeat(52), namespace: NS } };
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(long) });
      await c.kubectl(["delete", "xp", "podmeta", "nosecrets", "x".repeat(52)]);
    });

    it("the shared expert: Workers by default, a width that does not divide is refused naming the field", async () => {
      const c = cluster();
      const qwen = { architecture: "qwen2-moe", sharedExperts: 1, sharedIntermediateSize: 512 };
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(pool("shared", NS, { model: qwen })) });
      const got = JSON.parse((await c.kubectl(["get", "xp", "shared", "-o", "json"])).stdout);
      expect(got.spec.placement.sharedExperts).toBe("Workers");
      expect(got.spec.model.sharedIntermediateSize).toBe(512);

      const odd = pool("odd", NS, { model: { ...qwen, sharedIntermediateSize: 200 } });
      const r = await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(odd), check: false });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("spec.model.sharedIntermediateSize");
      expect(r.stderr).toContain("must be a multiple of model.intermediateSize");
      // In the router any width is fine; so is a cache sized for the routed experts only (2 × 8 = 2 layers × 8).
      const inRouter = pool("odd", NS, {
        model: { ...qwen, sharedIntermediateSize: 200 },
        placement: { sharedExperts: "Router" },
        cache: { residentExperts: 8 },
      });
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(inRouter) });
      await c.kubectl(["delete", "xp", "shared", "odd"]);
    });

    it("dense layers take no cache: 61 layers with the first 3 dense need the 58 MoE layers' slots only", async () => {
      const c = cluster();
      // 2 workers × 232 = 464 = 58 layers × 8 experts; counting the 3 dense layers would want 488
      const ds = pool("dense", NS, {
        model: { layers: 61, firstDenseLayers: 3, denseLayers: [1, 2] },
        cache: { residentExperts: 232 },
      });
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(ds) });
      const got = JSON.parse((await c.kubectl(["get", "xp", "dense", "-o", "json"])).stdout);
      expect(got.spec.model.firstDenseLayers).toBe(3);
      expect(got.spec.model.denseLayers).toEqual([1, 2]);
      const short = pool("short", NS, { model: { layers: 61, firstDenseLayers: 3 }, cache: { residentExperts: 231 } });
      const r = await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(short), check: false });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("cache.residentExperts * replicas must hold every expert slot");
      await c.kubectl(["delete", "xp", "dense"]);
    });

    it("loadSignals.refreshMs below 2000 alone is accepted: timeoutMs has no default to break its rule", async () => {
      // The router takes min(2000, refreshMs) for an unset timeoutMs (packages/moe resolveRoutingPolicy); before,
      // the schema's default 2000 made `timeoutMs <= refreshMs` refuse a policy that never set a timeout.
      const c = cluster();
      const fast = rp({ poolRef: { name: "a" }, loadSignals: { refreshMs: 1000 } }, "fast");
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(fast) });
      const got = JSON.parse((await c.kubectl(["get", "rpol", "fast", "-o", "json"])).stdout);
      expect(got.spec.loadSignals).toMatchObject({ refreshMs: 1000, stalenessMs: 30000 });
      expect(got.spec.loadSignals.timeoutMs).toBeUndefined();
      const paired = rp({ poolRef: { name: "a" }, loadSignals: { refreshMs: 1000, timeoutMs: 500 } }, "paired");
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(paired) });
      await c.kubectl(["delete", "rpol", "fast", "paired"]);
    });

    it("a negative replicas is refused by the schema alone, with no spurious redundantExperts or cache error", async () => {
      const c = cluster();
      const neg = pool("neg", NS, { replicas: -1, cache: { residentExperts: 8 } });
      const r = await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(neg), check: false });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("spec.replicas in body should be greater than or equal to 0");
      expect(r.stderr).not.toContain("redundantExperts");
      expect(r.stderr).not.toContain("cache.residentExperts");
    });

    it("a cross-field refusal names the other field's default when it is at its default (the user may not have set it)", async () => {
      const c = cluster();
      const refusal = async (spec: Record<string, unknown>) => {
        const r = await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(rp(spec, "d")), check: false });
        expect(r.code).not.toBe(0);
        return r.stderr;
      };
      expect(await refusal({ poolRef: { name: "p" }, batching: { maxBatchTokens: 100000 } })).toContain(
        "batching.maxQueueTokens must be >= batching.maxBatchTokens (maxQueueTokens defaults to 65536 when unset; set it too)",
      );
      expect(await refusal({ poolRef: { name: "p" }, loadSignals: { refreshMs: 60000 } })).toContain(
        "loadSignals.stalenessMs must be >= loadSignals.refreshMs (stalenessMs defaults to 30000 when unset; set it too)",
      );
      // set, and not at the default: the plain message
      const both = await refusal({ poolRef: { name: "p" }, batching: { maxBatchTokens: 1024, maxQueueTokens: 512 } });
      expect(both).toContain("batching.maxQueueTokens must be >= batching.maxBatchTokens");
      expect(both).not.toContain("defaults to");
    });

    it("refuses changing a RoutingPolicy's poolRef (transition rule) and keeps the old one", async () => {
      const c = cluster();
      await c.kubectl(["create", "-f", "-"], { input: JSON.stringify(rp({ poolRef: { name: "a" } }, "fixed")) });
      const r = await c.kubectl(["apply", "-f", "-"], {
        input: JSON.stringify(rp({ poolRef: { name: "b" } }, "fixed")),
        check: false,
      });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("poolRef.name is immutable");
      const got = JSON.parse((await c.kubectl(["get", "rpol", "fixed", "-o", "json"])).stdout);
      expect(got.spec.poolRef.name).toBe("a");
      await c.kubectl(["delete", "rpol", "fixed"]);
    });
  },
);
