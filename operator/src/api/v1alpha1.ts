// switchyard.dev/v1alpha1: ExpertPool and RoutingPolicy. These definitions are the single source of truth:
// crds/*.yaml are generated from them (`npm run gen:crds`) and the TypeScript types are inferred from them.
import { RESERVED_KEY_PREFIX, RESERVED_POD_LABEL_KEYS } from "../controller/names.js";
import { arr, bool, enm, freeform, type Infer, int, type JsonSchema, map, num, obj, quantity, str } from "./schema.js";

export const GROUP = "switchyard.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;

const DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
export const DNS_SUBDOMAIN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
// Label keys and values as core/v1 validates them (a qualified name: optional DNS-subdomain prefix, then a name of
// at most 63). The operator copies these into the worker pod template; a pool the API server would accept but
// whose StatefulSet it would refuse would never get workers. No backslashes: the key pattern also goes into CEL.
export const QUALIFIED_NAME =
  "([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?";
export const LABEL_VALUE = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

// ---------- shared pieces ----------

export const conditionSchema = obj(
  "A metav1.Condition: one aspect of the object's observed state.",
  {
    type: str("Condition type: Ready, Progressing or Degraded (CamelCase).", { maxLength: 316, minLength: 1 }),
    status: enm("True, False or Unknown.", ["True", "False", "Unknown"] as const),
    observedGeneration: int("metadata.generation the condition was computed from.", { minimum: 0, format: "int64" }),
    lastTransitionTime: str("Last time the status changed (RFC 3339).", { format: "date-time" }),
    reason: str("One CamelCase word saying why the condition has its status.", {
      maxLength: 1024,
      minLength: 1,
      pattern: "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    }),
    message: str("Human-readable detail.", { maxLength: 32768 }),
  },
  { required: ["type", "status", "lastTransitionTime", "reason", "message"] },
);
export type Condition = Infer<typeof conditionSchema>;

const conditions = arr("Observed conditions, keyed by type.", conditionSchema, {
  maxItems: 8,
  listMapKeys: ["type"],
});

const tolerationSchema = obj(
  "A core/v1 Toleration copied onto worker pods.",
  {
    key: str("Taint key the toleration applies to; empty matches all keys (operator Exists).", {
      maxLength: 316,
      pattern: `^(${QUALIFIED_NAME})?$`,
    }),
    operator: enm("Exists or Equal (default Equal).", ["Exists", "Equal"] as const),
    value: str("Taint value the toleration matches (operator Equal; empty with Exists).", {
      maxLength: 63,
      pattern: LABEL_VALUE,
    }),
    effect: enm("Taint effect to match; empty matches all.", ["NoSchedule", "PreferNoSchedule", "NoExecute"] as const),
    tolerationSeconds: int("For NoExecute: how long the pod stays bound after the taint appears.", { format: "int64" }),
  },
  {
    // core/v1's own checks of a Toleration, which would otherwise surface only as a refused StatefulSet.
    validations: [
      {
        rule: "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        message: "worker.tolerations: value must be empty when operator is Exists",
        fieldPath: ".value",
      },
      {
        rule: "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        message: "worker.tolerations: operator must be Exists when key is empty (that matches every taint)",
        fieldPath: ".operator",
      },
      {
        rule: "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        message: "worker.tolerations: tolerationSeconds needs effect NoExecute",
        fieldPath: ".tolerationSeconds",
      },
    ],
  },
);
export type Toleration = Infer<typeof tolerationSchema>;

const resourceList = (what: string) =>
  map(
    `${what}, by resource name (cpu, memory, ...); not nvidia.com/gpu, which is set from gpusPerWorker.`,
    quantity("A quantity."),
    {
      maxProperties: 16,
    },
  );

// ---------- ExpertPool ----------

export const checkpointSchema = obj(
  "Where the safetensors checkpoint (Hugging Face key names) is read from. Exactly one source.",
  {
    pvc: obj(
      "A PersistentVolumeClaim mounted read-only at /checkpoint.",
      {
        claimName: str("Name of the PVC in the pool's namespace.", { maxLength: 253, minLength: 1 }),
        subPath: str("Directory inside the volume holding the checkpoint, relative (no leading '/', no '..').", {
          maxLength: 1024,
        }),
      },
      {
        required: ["claimName"],
        validations: [
          {
            // core/v1 refuses such a volumeMount subPath, but only when the StatefulSet is applied: the pool would
            // be accepted and never get workers.
            rule: "!has(self.subPath) || (!self.subPath.startsWith('/') && !self.subPath.matches('(^|/)[.][.](/|$)'))",
            message:
              "checkpoint.pvc.subPath must be a relative path inside the volume: no leading '/', no '..' element",
            fieldPath: ".subPath",
          },
        ],
      },
    ),
    hostPath: obj(
      "A directory on the node mounted read-only at /checkpoint (single-node and test setups).",
      { path: str("Absolute path on the node.", { maxLength: 1024, pattern: "^/" }) },
      { required: ["path"] },
    ),
    uri: str(
      "Where to download the checkpoint from: the https:// (or http://) URL of its directory (config.json, model.safetensors or model.safetensors.index.json and its shards), or hf://ORG/NAME[@REVISION] for the Hugging Face Hub. Workers download it at start, the router only its gate and shared-expert tensors. S3 or GCS: the public https URL of the directory, or a PVC (a presigned URL signs one object, not a directory).",
      {
        maxLength: 2048,
        pattern: "^(https?://[^/].*|hf://[^/@]+/[^/@]+(@.+)?)$",
      },
    ),
    downloadSize: quantity(
      "With uri: the disk the download needs on each worker's node (e.g. 100Gi): requested as the init container's ephemeral storage, so the scheduler places the pod where it fits, and the limit of the pod's checkpoint emptyDir. Unset: no request, no limit.",
    ),
    endpoint: str(
      "With an hf:// uri: the Hugging Face Hub endpoint to download from instead of https://huggingface.co (a mirror or proxy of the Hub, e.g. https://hf-mirror.example.com), an http(s) URL, given to the workers' fetch-checkpoint init container as HF_ENDPOINT, and to the router (the pool's hfEndpoint in its config), which downloads the pool's gate tensors from it; over http:// the tokenSecret's token travels unencrypted (an in-cluster mirror).",
      { maxLength: 2048, pattern: "^https?://[^\\s/][^\\s]*$" },
    ),
    tokenSecret: obj(
      "With an hf:// uri only: a Secret in the pool's namespace holding a Hugging Face access token, given to the workers' fetch-checkpoint init container as HF_TOKEN (gated or private repositories); the token is sent to the Hub only, never to an https:// or http:// checkpoint URL, so the API server refuses it with one. The router takes the same token from the key <namespace>_<pool> of its own optional Secret (the chart's router.hfTokensSecret), else its own HF_TOKEN; the operator copies it there only with --sync-hub-tokens (the chart's operator.syncHubTokens), and otherwise reads no Secrets.",
      {
        name: str("Name of the Secret.", {
          maxLength: 253,
          minLength: 1,
          pattern: DNS_SUBDOMAIN,
        }),
        key: str("Key in the Secret (default HF_TOKEN).", { maxLength: 253, pattern: "^[-._a-zA-Z0-9]+$" }),
      },
      { required: ["name"] },
    ),
  },
  {
    validations: [
      {
        rule: "[has(self.pvc), has(self.hostPath), has(self.uri)].filter(x, x).size() == 1",
        message: "exactly one of checkpoint.pvc, checkpoint.hostPath, checkpoint.uri must be set",
      },
      {
        // the fetcher sends the token only to the Hub (packages/moe fetch/uri.ts): with another URL it would go unused,
        // and sending it there would hand a Hub credential to an arbitrary host
        rule: "!has(self.tokenSecret) || (has(self.uri) && self.uri.startsWith('hf://'))",
        message:
          "checkpoint.tokenSecret goes with an hf:// checkpoint.uri (the token is for the Hugging Face Hub and is sent to it only)",
        fieldPath: ".tokenSecret",
      },
      {
        rule: "!has(self.downloadSize) || has(self.uri)",
        message: "checkpoint.downloadSize goes with checkpoint.uri",
      },
      {
        rule: "!has(self.endpoint) || (has(self.uri) && self.uri.startsWith('hf://'))",
        message: "checkpoint.endpoint goes with an hf:// checkpoint.uri (it is the Hub's address)",
        fieldPath: ".endpoint",
      },
    ],
  },
);

// Layers with experts (desired.ts moeLayerCount, in CEL): layers less the leading dense ones and the listed dense
// ones past them (the list is a set, so each counts once). `m` is the CEL path of spec.model.
const MOE_LAYERS_CEL = (m: string) =>
  `(${m}.layers - (has(${m}.firstDenseLayers) ? ${m}.firstDenseLayers : 0) - (has(${m}.denseLayers) ? ${m}.denseLayers.filter(l, l < ${m}.layers && l >= (has(${m}.firstDenseLayers) ? ${m}.firstDenseLayers : 0)).size() : 0))`;

export const modelSchema = obj(
  "The MoE model whose routed experts this pool serves.",
  {
    architecture: enm(
      "Model family, for the operator's own checks and defaults. The operator passes it to neither the workers nor the router: they take tensor key names and gate semantics from the checkpoint's config.json model_type (mixtral, qwen2_moe, qwen3_moe, deepseek_v3 or switchyard_moe), and a value that disagrees with it is not detected. The operator uses it to refuse a RoutingPolicy's gating.topP on deepseek-v3 (a sigmoid gate), and, with sharedIntermediateSize unset, to know deepseek-v3's shared-expert width (sharedExperts × intermediateSize) and place it on the workers; other families then keep it in the router. custom: a checkpoint of model_type switchyard_moe, a generic MoE whose config.json spells out its gate (scoring_func, n_group, topk_group, norm_topk_prob, n_shared_experts, shared_expert_intermediate_size); the operator assumes nothing of it.",
      ["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3", "custom"] as const,
    ),
    layers: int(
      "Decoder layers, dense ones included: the checkpoint config's num_hidden_layers (DeepSeek-V3: 61; Mixtral 8x7B: 32). The plan has one row per layer and the router and workers refuse one of another length; name the layers without experts in firstDenseLayers / denseLayers so that they get no expert copies.",
      { minimum: 1, maximum: 512 },
    ),
    firstDenseLayers: int(
      "Leading layers with a dense MLP instead of experts: DeepSeek-V3's first_k_dense_replace (3). Their plan rows are empty; they take no cache slots and no part in the imbalance figures. Unset: 0.",
      { minimum: 0, maximum: 511 },
    ),
    denseLayers: arr(
      "Further layer indices with a dense MLP instead of experts: Qwen2/Qwen3-MoE mlp_only_layers, or the layers decoder_sparse_step skips (layer l has experts iff (l + 1) % decoder_sparse_step == 0). Same effect as firstDenseLayers; the two may overlap.",
      int("A layer index, 0 .. layers-1.", { minimum: 0, maximum: 511 }),
      { maxItems: 512, listType: "set" },
    ),
    experts: int("Routed experts per MoE layer.", { minimum: 1, maximum: 1024 }),
    topK: int("Experts each token is routed to (the model's num_experts_per_tok).", { minimum: 1, maximum: 64 }),
    hiddenSize: int(
      "Model hidden size d (columns of a token matrix), recorded for users and tools: the operator passes it to neither the workers nor the router, which read d from the checkpoint's config.json (hidden_size); a request whose hidden states are not d wide is refused there.",
      { minimum: 1, maximum: 65536 },
    ),
    intermediateSize: int("Per-expert FFN intermediate size.", { minimum: 1, maximum: 131072 }),
    sharedExperts: int("Shared (always-on) experts per layer, served beside the routed ones.", {
      minimum: 0,
      maximum: 16,
      default: 0,
    }),
    sharedIntermediateSize: int(
      "Intermediate size of the whole shared-expert MLP (Qwen2-MoE's shared_expert_intermediate_size; DeepSeek-V3: moe_intermediate_size × n_shared_experts). Unset: sharedExperts × intermediateSize for deepseek-v3; for other architectures the width is unknown and the router runs the shared expert.",
      { minimum: 1, maximum: 2097152 },
    ),
    dtype: enm(
      "The model's dtype, recorded for users and tools: the operator passes it to neither the workers nor the router. A worker keeps each expert's weights as the checkpoint stores them (bfloat16 stays bfloat16; float16 and float32 become float32), computes each batch in the dtype of the hidden states its request sends (FLOAT32, BFLOAT16 or FLOAT16, accumulating in float32) and answers in that dtype.",
      ["bfloat16", "float16", "float32"] as const,
      { default: "bfloat16" },
    ),
    checkpoint: checkpointSchema,
  },
  {
    required: ["architecture", "layers", "experts", "topK", "hiddenSize", "intermediateSize", "checkpoint"],
    validations: [
      { rule: "self.topK <= self.experts", message: "model.topK must be <= model.experts", fieldPath: ".topK" },
      {
        rule: "!has(self.firstDenseLayers) || self.firstDenseLayers < self.layers",
        message: "model.firstDenseLayers must be < model.layers: a pool needs a layer with experts",
        fieldPath: ".firstDenseLayers",
      },
      {
        rule: "!has(self.denseLayers) || self.denseLayers.all(l, l < self.layers)",
        message: "model.denseLayers must be layer indices < model.layers",
        fieldPath: ".denseLayers",
      },
      {
        rule: `${MOE_LAYERS_CEL("self")} >= 1`,
        message: "model.firstDenseLayers and model.denseLayers leave no layer with experts",
        fieldPath: ".denseLayers",
      },
    ],
  },
);

// A pod label key the operator sets itself (names.ts isReservedPodKey), in CEL over the key `k`.
const RESERVED_CEL = `(k.startsWith('${RESERVED_KEY_PREFIX}') || k in [${RESERVED_POD_LABEL_KEYS.map((k) => `'${k}'`).join(", ")}])`;

export const workerSchema = obj(
  "Template for the worker pods (one StatefulSet per pool).",
  {
    // The CUDA image by default, because gpusPerWorker defaults to 1: a minimal pool requests a GPU and should use
    // it. The CUDA image also runs CPU pools (--backend auto falls back to CPU when no GPU is visible); the smaller
    // CPU-only image is the tag without -cuda. test/src/chart/crds.test.ts keeps this equal to the chart's values.
    image: str(
      "Worker container image. Default: the CUDA image (tag <version>-cuda), since gpusPerWorker defaults to 1; it also runs CPU workers (backend auto falls back to CPU when no GPU is visible). For gpusPerWorker 0 the CPU-only image, the same repository with tag <version>, is much smaller.",
      {
        default: "ghcr.io/switchyard-dev/switchyard-worker:0.1.0-cuda",
        maxLength: 1024,
        minLength: 1,
      },
    ),
    imagePullPolicy: enm("Image pull policy.", ["Always", "IfNotPresent", "Never"] as const, {
      default: "IfNotPresent",
    }),
    gpusPerWorker: int(
      "nvidia.com/gpu requested by each worker pod; 0 runs CPU workers. A worker runs its experts on all of its GPUs, in equal shares (cache.residentExperts is the worker's, split among them); a worker over 2 GPUs served DeepSeek-V3 1.42x as fast as over one, and 1.14-1.43x as fast as two workers with one GPU each (expert-worker/README.md).",
      { minimum: 0, maximum: 16, default: 1 },
    ),
    backend: enm("Expert kernel backend; auto picks cuda when a GPU is visible.", ["auto", "cpu", "cuda"] as const, {
      default: "auto",
    }),
    queueCapacity: int(
      "Batches (the router's RunExperts calls) that may wait on a worker behind the ones it is running; a batch beyond them is refused with RESOURCE_EXHAUSTED (the router tries another replica). The worker's --queue-capacity, default 64 as the worker's own. It counts batches, not tokens: a pool stored with the former default 65536 keeps that value (still valid, in effect no limit).",
      {
        minimum: 1,
        maximum: 16777216,
        default: 64,
      },
    ),
    warmUp: bool(
      "Load the served experts before the pod reports ready (its readiness probe), so the router never sends a cold " +
        "worker its first batch; false: ready at once, experts load on first use.",
      { default: true },
    ),
    resources: obj(
      "CPU and memory for the worker container.",
      {
        requests: resourceList("Requests"),
        limits: resourceList("Limits"),
      },
      {
        validations: [
          {
            // core/v1's own check, which would otherwise surface only as the StatefulSet's refusal (status
            // ApplyFailed naming the pod template's path). string(): a value is int-or-string; isQuantity keeps a
            // malformed one (refused by the pattern already) from failing the rule with an evaluation error.
            rule: "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
            message: "worker.resources.requests must be <= worker.resources.limits for every resource given in both",
            fieldPath: ".requests",
          },
          // The operator writes nvidia.com/gpu from gpusPerWorker: a value here was either overwritten without a word
          // (gpusPerWorker > 0) or, with gpusPerWorker 0, a GPU request core/v1 refuses for want of a limit. One rule
          // per map, so that the refusal names the one that has it.
          {
            rule: "!has(self.requests) || !('nvidia.com/gpu' in self.requests)",
            message: "worker.resources must not set nvidia.com/gpu: the operator sets it from worker.gpusPerWorker",
            fieldPath: ".requests",
          },
          {
            rule: "!has(self.limits) || !('nvidia.com/gpu' in self.limits)",
            message: "worker.resources must not set nvidia.com/gpu: the operator sets it from worker.gpusPerWorker",
            fieldPath: ".limits",
          },
        ],
      },
    ),
    nodeSelector: map(
      "Node labels the worker pods must match.",
      str("Label value.", { maxLength: 63, pattern: LABEL_VALUE }),
      {
        maxProperties: 32,
        validations: [
          {
            rule: `self.all(k, k.size() <= 317 && k.matches('^${QUALIFIED_NAME}$'))`,
            message: "worker.nodeSelector keys must be label keys ([prefix/]name, name at most 63 characters)",
          },
        ],
      },
    ),
    tolerations: arr("Tolerations added to the worker pods (GPU nodes are often tainted).", tolerationSchema, {
      maxItems: 32,
    }),
    priorityClassName: str("PriorityClass of the worker pods.", { maxLength: 253, pattern: DNS_SUBDOMAIN }),
    imagePullSecrets: arr(
      "Secrets in the pool's namespace for pulling the worker image (a private registry or mirror). Unset: the operator's --worker-image-pull-secret names (the chart's imagePullSecrets), if any; an empty list: none.",
      obj(
        "A Secret of type kubernetes.io/dockerconfigjson in the pool's namespace.",
        { name: str("Name of the Secret.", { maxLength: 253, minLength: 1, pattern: DNS_SUBDOMAIN }) },
        { required: ["name"] },
      ),
      { maxItems: 16, listMapKeys: ["name"] },
    ),
    serviceAccountName: str(
      "ServiceAccount (in the pool's namespace) the worker pods run as. Unset: the namespace's default account, with no API token mounted (workers never call the Kubernetes API). Set: that account's own automountServiceAccountToken decides (the pool chose an identity, e.g. for workload identity to a private bucket or registry).",
      { maxLength: 253, pattern: DNS_SUBDOMAIN },
    ),
    podLabels: map(
      `Extra labels on the worker pods (cost attribution, sidecar.istio.io/inject, ...), over the operator's --worker-pod-label defaults. Not the operator's own: ${RESERVED_POD_LABEL_KEYS.join(", ")} or ${RESERVED_KEY_PREFIX}*. A change rolls the workers.`,
      str("Label value.", { maxLength: 63, pattern: LABEL_VALUE }),
      {
        maxProperties: 32,
        validations: [
          {
            rule: `self.all(k, k.size() <= 317 && k.matches('^${QUALIFIED_NAME}$'))`,
            message: "worker.podLabels keys must be label keys ([prefix/]name, name at most 63 characters)",
          },
          {
            rule: `!self.exists(k, ${RESERVED_CEL})`,
            message: `worker.podLabels must not set the operator's own labels (${RESERVED_POD_LABEL_KEYS.join(", ")}, ${RESERVED_KEY_PREFIX}*): they select and own the worker pods`,
          },
        ],
      },
    ),
    podAnnotations: map(
      `Extra annotations on the worker pods (e.g. for a service mesh or a log shipper). Not under ${RESERVED_KEY_PREFIX} (the operator's own). A change rolls the workers.`,
      // 32 × (4096 + 317) stays well inside the API server's 256 KiB for all of a pod's annotations.
      str("Annotation value.", { maxLength: 4096 }),
      {
        maxProperties: 32,
        validations: [
          {
            rule: `self.all(k, k.size() <= 317 && k.matches('^${QUALIFIED_NAME}$'))`,
            message: "worker.podAnnotations keys must be qualified names ([prefix/]name, name at most 63 characters)",
          },
          {
            rule: `!self.exists(k, k.startsWith('${RESERVED_KEY_PREFIX}'))`,
            message: `worker.podAnnotations must not set ${RESERVED_KEY_PREFIX}* keys: the operator sets them on worker pods`,
          },
        ],
      },
    ),
  },
  {
    default: {},
    validations: [
      {
        rule: "self.gpusPerWorker > 0 || self.backend != 'cuda'",
        message: "worker.backend cuda needs worker.gpusPerWorker >= 1",
        fieldPath: ".backend",
      },
    ],
  },
);

export const cacheSchema = obj(
  "Expert cache sizing on each worker, in (layer, expert) slots. A CUDA worker has two tiers: GPU slots, and behind them a host-memory tier of experts read from the checkpoint, so that a GPU miss is an upload from host memory rather than a checkpoint read. A CPU worker computes from host memory: one tier. Nothing here depends on replicas, so a scale rolls no worker.",
  {
    residentExperts: int(
      "Slots per worker of the tier it computes from (the worker's --cache-capacity): GPU slots on a CUDA worker (split evenly among its GPUs), its one cache on a CPU worker. Without hostTier.enabled no worker is planned more copies than this. Unset: each worker sizes its cache from its own share of the placement plan, so every expert it serves stays resident, and re-sizes it when the plan changes (a scale); a CUDA worker's GPU slots are then as many as fit in 80% of device memory (at most 1024).",
      { minimum: 1, maximum: 1048576 },
    ),
    hostTier: obj(
      "Host-memory tier behind the GPU slots of CUDA workers (ExpertFlow-style offloading). Off: a worker's host tier holds what its GPU slots do (residentExperts). A CPU worker has no tier behind its one cache: there hostTier only lets a worker's planned share exceed residentExperts, and capacity sizes the cache when residentExperts is unset.",
      {
        enabled: bool(
          "Keep more experts in host memory than in the GPU slots (capacity; unset: the worker's whole planned share), and let a worker be planned more copies than residentExperts; the ones beyond it are uploaded from host memory on demand.",
          { default: false },
        ),
        capacity: int(
          "Host-tier slots per worker (the worker's --host-cache-capacity), at least residentExperts; used only while enabled. Unset: the worker's whole share of the plan, re-sized when the plan changes.",
          { minimum: 1, maximum: 1048576 },
        ),
      },
      { default: {} },
    ),
  },
  { default: {} },
);

// A Prometheus duration as PromQL range selectors take it (prometheus/common model.ParseDuration): <integer><unit>
// terms with units in decreasing order y, w, d, h, m, s, ms, each at most once ("1h30m"; not "30s1m" nor "5m5m",
// which Prometheus refuses, so every heat query would fail). Every term is optional: minLength rules out "".
const PROM_DURATION = "^([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$";

export const rebalanceSchema = obj(
  "Load-driven replanning from the expert heat the router exports (switchyard_router_expert_tokens_total): every intervalSeconds the operator asks Prometheus for each (layer, expert)'s token assignments over the last window and replans with them, publishing the new plan only when it is clearly better. On only while prometheusUrl is set.",
  {
    prometheusUrl: str(
      "Base URL of the Prometheus HTTP API (the operator GETs <url>/api/v1/query); unset = off (uniform load).",
      { maxLength: 2048, pattern: "^https?://[^\\s]+$" },
    ),
    window: str(
      'Range of heat the plan is made from, a Prometheus duration: units y, w, d, h, m, s, ms, largest first, each at most once ("10m", "1h30m").',
      {
        default: "10m",
        minLength: 1,
        maxLength: 32,
        pattern: PROM_DURATION,
        validations: [
          {
            rule: "!self.matches('^(0+(ms|s|m|h|d|w|y))+$')",
            message: "placement.rebalance.window must be longer than zero",
          },
        ],
      },
    ),
    intervalSeconds: int("Seconds between heat queries (and replan decisions).", {
      minimum: 30,
      maximum: 86400,
      default: 300,
    }),
    timeoutSeconds: int("Per-query HTTP timeout in seconds; a query that takes longer counts as failed.", {
      minimum: 1,
      maximum: 300,
      default: 10,
    }),
    minImprovement: num(
      "Publish a new plan only when its expected imbalance under the observed heat is at least this much lower, relative to the current plan's under the same heat (0.05 = 5%); imbalance is the mean over layers of max/mean worker load. Below it the plan, and the weights on the workers, stay as they are: noise moves nothing.",
      { minimum: 0, maximum: 1, default: 0.05 },
    ),
  },
  {
    validations: [
      {
        rule: "self.timeoutSeconds < self.intervalSeconds",
        message: "placement.rebalance.timeoutSeconds must be < placement.rebalance.intervalSeconds",
        fieldPath: ".timeoutSeconds",
      },
    ],
  },
);

export const placementSchema = obj(
  "How experts are placed on workers (the plan is published in ConfigMap <pool>-placement).",
  {
    strategy: enm(
      "balanced: EPLB-style greedy replication and load-balanced packing, stable across replans; contiguous: expert e on worker e mod replicas.",
      ["balanced", "contiguous"] as const,
      { default: "balanced" },
    ),
    redundantExperts: int("Extra expert copies per layer given to the hottest experts (EPLB redundant slots).", {
      minimum: 0,
      maximum: 4096,
      default: 0,
    }),
    rebalance: rebalanceSchema,
    sharedExperts: enm(
      "Where the shared expert runs. Workers: split into model.sharedIntermediateSize / model.intermediateSize slices of a routed expert's width, placed like experts (expert ids from model.experts on), since in the router its CPU is the bound (measured: 3.7 router cores at 1337 tokens/s for Qwen1.5-MoE on an H200). Router: in the router (the plan lists the routed experts only).",
      ["Workers", "Router"] as const,
      { default: "Workers" },
    ),
  },
  {
    default: {},
    validations: [
      {
        // A contiguous layout ignores load except for who gets the redundant copies: with none, heat changes nothing.
        rule: "!has(self.rebalance) || !has(self.rebalance.prometheusUrl) || self.strategy == 'balanced' || self.redundantExperts > 0",
        message:
          "placement.rebalance has no effect with strategy contiguous and redundantExperts 0 (the layout does not depend on load); use strategy balanced or add redundantExperts",
        fieldPath: ".rebalance",
      },
    ],
  },
);

// Slices of the shared expert the workers serve (desired.ts sharedSlicesOf, in CEL): its width over a routed
// expert's. Unset sharedIntermediateSize is known only for deepseek-v3 (sharedExperts × intermediateSize, hence
// sharedExperts slices); elsewhere (Qwen2-MoE's is 4x at Qwen1.5-MoE-A2.7B) the router runs it: 0 slices. That also
// keeps pools stored before these fields existed (where Workers is now the default) on their plan.
const SHARED_SLICES_CEL =
  "(self.placement.sharedExperts == 'Workers' && self.model.sharedExperts > 0 ? (has(self.model.sharedIntermediateSize) ? self.model.sharedIntermediateSize / self.model.intermediateSize : (self.model.architecture == 'deepseek-v3' ? self.model.sharedExperts : 0)) : 0)";

export const expertPoolSpecSchema = obj(
  "Desired state of an ExpertPool.",
  {
    model: modelSchema,
    replicas: int("Number of worker pods (scale subresource: kubectl scale, HPA).", {
      minimum: 0,
      maximum: 1024,
      default: 2,
    }),
    worker: workerSchema,
    cache: cacheSchema,
    placement: placementSchema,
  },
  {
    required: ["model"],
    validations: [
      {
        // replicas <= 0, not == 0: a negative count is refused by the schema's minimum already, and this rule would
        // add a second, wrong refusal (-1 makes experts * (replicas - 1) negative).
        rule: "self.replicas <= 0 || self.placement.redundantExperts <= self.model.experts * (self.replicas - 1)",
        message:
          "placement.redundantExperts must be <= model.experts * (replicas - 1): each redundant copy needs a worker that does not already hold that expert",
        fieldPath: ".placement.redundantExperts",
      },
      {
        rule: "self.placement.sharedExperts != 'Workers' || self.model.sharedExperts == 0 || !has(self.model.sharedIntermediateSize) || self.model.sharedIntermediateSize % self.model.intermediateSize == 0",
        message:
          "model.sharedIntermediateSize must be a multiple of model.intermediateSize when placement.sharedExperts is Workers (the workers serve the shared expert as slices of a routed expert's width); set placement.sharedExperts to Router otherwise",
        fieldPath: ".model.sharedIntermediateSize",
      },
      {
        rule: `self.replicas <= 0 || !has(self.cache.residentExperts) || self.cache.hostTier.enabled || self.cache.residentExperts * self.replicas >= ${MOE_LAYERS_CEL("self.model")} * (self.model.experts + self.placement.redundantExperts + ${SHARED_SLICES_CEL})`,
        message:
          "cache.residentExperts * replicas must hold every expert slot, MoE layers (model.layers less firstDenseLayers and denseLayers) * (experts + placement.redundantExperts + shared slices), unless cache.hostTier.enabled; shared slices = model.sharedIntermediateSize / model.intermediateSize (unset: model.sharedExperts for deepseek-v3, else 0) if placement.sharedExperts is Workers and model.sharedExperts > 0, else 0",
        fieldPath: ".cache.residentExperts",
      },
      {
        rule: "!has(self.cache.residentExperts) || !has(self.cache.hostTier.capacity) || self.cache.hostTier.capacity >= self.cache.residentExperts",
        message: "cache.hostTier.capacity must be >= cache.residentExperts",
        fieldPath: ".cache.hostTier.capacity",
      },
      {
        // The plan lists a worker per expert copy (~5-8 bytes each in its ConfigMap) and is made on the event loop.
        // Measured with desiredPlan (desired.ts) at 32768 copies, 1024 workers, on a shared 2-core host: 209-245 KiB
        // (32x1024, 58x(256+306), 512x64, 64x(256+256)) against the ConfigMap's 1 MiB, 0.2-0.65 s to plan; at 65536,
        // 370-434 KiB and up to 0.75 s; at 131072, 684 KiB and 1.8 s; at 262144, 1.3 MiB (refused) and 3.5 s.
        // DeepSeek-V3 (58 MoE layers x 256) keeps room for 306 redundant slots a layer, Qwen3-235B (94 x 128) for 220.
        rule: `${MOE_LAYERS_CEL("self.model")} * (self.model.experts + self.placement.redundantExperts + ${SHARED_SLICES_CEL}) <= 32768`,
        message:
          "MoE layers (model.layers less firstDenseLayers and denseLayers) * (model.experts + placement.redundantExperts + shared slices) must be <= 32768 expert copies: the placement plan must fit its ConfigMap and plan quickly; lower placement.redundantExperts, or split the model's layers over several pools",
      },
    ],
  },
);
export type ExpertPoolSpec = Infer<typeof expertPoolSpecSchema>;

export const expertPoolStatusSchema = obj("Observed state of an ExpertPool, rebuilt by the operator on every pass.", {
  observedGeneration: int("metadata.generation this status describes.", { format: "int64" }),
  replicas: int("Worker pods that exist.", { minimum: 0 }),
  readyReplicas: int("Worker pods passing readiness (gRPC health SERVING).", { minimum: 0 }),
  updatedReplicas: int("Worker pods at the current spec revision.", { minimum: 0 }),
  selector: str("Label selector of the worker pods, serialized (for the scale subresource and HPA).", {
    maxLength: 1024,
  }),
  conditions,
  placement: obj("Summary of the published placement plan.", {
    version: int("Plan version; bumps on every change.", { format: "int64", minimum: 0 }),
    configMap: str("ConfigMap holding plan.json.", { maxLength: 253 }),
    workers: int("Workers in the plan.", { minimum: 0 }),
    slotsPerWorker: arr(
      "(layer, expert) copies assigned to each worker, in plan order; the shared expert's slices count as experts.",
      int("Slots."),
      { maxItems: 1024 },
    ),
    sharedSlices: int(
      "Slices of the shared expert per layer the plan places on the workers (expert ids from model.experts on); 0 = the router runs it, or the model has none.",
      { minimum: 0 },
    ),
    replicatedExperts: int("(layer, expert) pairs holding more than one copy.", { minimum: 0 }),
    loadImbalance: num("Expected max/mean worker load under the plan's load estimate (1 = perfect).", {
      minimum: 0,
    }),
    movedExperts: int("Expert copies that changed worker in the last replan.", { minimum: 0 }),
    rebalance: obj("Load-driven replanning (spec.placement.rebalance); absent while it is off.", {
      loadSource: enm(
        "prometheus: the plan was judged under the heat Prometheus last reported; uniform: no heat yet (no answer, or no traffic in the window), every expert counted as equally hot.",
        ["prometheus", "uniform"] as const,
      ),
      lastQueryTime: str("Last time Prometheus answered the heat query (RFC 3339).", { format: "date-time" }),
      observedImbalance: num(
        "The published plan's mean over layers of max/mean worker load under the observed heat (1 = perfect); what minImprovement is judged on.",
        { minimum: 0 },
      ),
      message: str("What the last decision was and why (kept, replanned, query failed).", { maxLength: 1024 }),
    }),
  }),
  endpoints: arr(
    "Worker gRPC endpoints (StatefulSet pod DNS names through the headless Service).",
    obj(
      "One worker.",
      {
        worker: str("Worker id (pod name).", { maxLength: 253 }),
        address: str("host:port.", { maxLength: 512 }),
      },
      { required: ["worker", "address"] },
    ),
    { maxItems: 1024, listMapKeys: ["worker"] },
  ),
});
export type ExpertPoolStatus = Infer<typeof expertPoolStatusSchema>;

/**
 * The ExpertPool's metadata.name, constrained in the root schema (the API server allows that for name and
 * generateName), so a refusal names metadata.name; a CEL rule at the root would report its path as `<nil>`.
 * At most 52 characters: it prefixes StatefulSet pod names and their controller-revision-hash label (63 at most);
 * a DNS label, because it names the pool's headless Service.
 */
export const expertPoolMetadataSchema = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 52, pattern: DNS_LABEL },
  },
} as const satisfies JsonSchema;

// ---------- RoutingPolicy ----------

export const gatingSchema = obj(
  "How tokens choose experts.",
  {
    topK: int("Experts per token; unset = the model's topK. Must not exceed the pool's experts.", {
      minimum: 1,
      maximum: 64,
    }),
    topP: num("Top-p dynamic routing: smallest set of experts whose probability reaches topP; unset = off.", {
      minimum: 0,
      exclusiveMinimum: true,
      maximum: 1,
    }),
    maxK: int(
      "Cap on experts per token under topP; unset = max(topK, 2 × the model's topK), where topK is gating.topK or, unset, the model's; at most the pool's experts.",
      { minimum: 1, maximum: 64 },
    ),
    capacityFactor: num(
      "Capacity per expert per flush = ceil(capacityFactor × assignments / experts); unset = dropless.",
      {
        minimum: 0,
        exclusiveMinimum: true,
        maximum: 64,
      },
    ),
    overflow: enm(
      "Assignments over capacity: drop them, spill to the next-best expert, or queue them for a later round.",
      ["drop", "spill", "queue"] as const,
      { default: "drop" },
    ),
  },
  {
    default: {},
    validations: [
      {
        rule: "!has(self.maxK) || has(self.topP)",
        message: "gating.maxK only applies with gating.topP",
        fieldPath: ".maxK",
      },
      {
        rule: "!has(self.maxK) || !has(self.topK) || self.maxK >= self.topK",
        message: "gating.maxK must be >= gating.topK",
        fieldPath: ".maxK",
      },
      {
        rule: "self.overflow == 'drop' || has(self.capacityFactor)",
        message: "gating.overflow spill or queue needs gating.capacityFactor (without it routing is dropless)",
        fieldPath: ".overflow",
      },
    ],
  },
);

// Defaults that a cross-field rule's message names (the rules see them filled in, set or not).
const DEFAULT_MAX_QUEUE_TOKENS = 65536;
const DEFAULT_STALENESS_MS = 30000;

export const batchingSchema = obj(
  "Expert-aware batching in the router.",
  {
    enabled: bool("false dispatches every request alone (the baseline).", { default: true }),
    maxBatchTokens: int("Flush a (pool, layer) queue once this many tokens wait.", {
      minimum: 1,
      maximum: 1048576,
      default: 256,
    }),
    maxWaitMs: num("... or this long after the first queued request (milliseconds; 0 = next tick).", {
      minimum: 0,
      maximum: 1000,
      default: 2,
    }),
    maxQueueTokens: int("Queued plus in-flight tokens per pool above which requests fail RESOURCE_EXHAUSTED.", {
      minimum: 1,
      maximum: 67108864,
      default: DEFAULT_MAX_QUEUE_TOKENS,
    }),
    flushesInFlight: int(
      "Flushes of one layer that may run at once: 1 holds new requests while one runs (largest batches); 2 overlaps the next flush's gating and transfers with the workers' time.",
      { minimum: 1, maximum: 16, default: 2 },
    ),
  },
  {
    default: {},
    validations: [
      {
        // Schema defaults are filled in before the rule runs, so it cannot tell an unset maxQueueTokens from one set
        // to the default: at the default value the message says it is one, for the user who raised maxBatchTokens
        // alone and never wrote a maxQueueTokens.
        rule: "self.maxQueueTokens >= self.maxBatchTokens",
        message: "batching.maxQueueTokens must be >= batching.maxBatchTokens",
        // A choice of two constants: string(int) in a message has no size bound the cost estimator could use.
        messageExpression: `self.maxQueueTokens == ${DEFAULT_MAX_QUEUE_TOKENS} ? 'batching.maxQueueTokens must be >= batching.maxBatchTokens (maxQueueTokens defaults to ${DEFAULT_MAX_QUEUE_TOKENS} when unset; set it too)' : 'batching.maxQueueTokens must be >= batching.maxBatchTokens'`,
        fieldPath: ".maxQueueTokens",
      },
    ],
  },
);

export const placementWeightsSchema = obj(
  "Weights of the router's replica choice (lower score wins).",
  {
    cacheAffinity: num("Penalty for a replica that does not hold the expert resident.", { minimum: 0, default: 1 }),
    load: num("Penalty per unit of normalised outstanding work.", { minimum: 0, default: 1 }),
    latency: num("Penalty per unit of normalised dispatch latency.", { minimum: 0, default: 0.5 }),
  },
  { default: {} },
);

export const loadSignalsSchema = obj(
  "Prometheus load signals the router reads.",
  {
    prometheusUrl: str(
      "Base URL of the Prometheus HTTP API (http or https, with a host); unset = the router's own counters only.",
      {
        maxLength: 2048,
        pattern: "^https?://[^/\\s]+",
      },
    ),
    queries: obj(
      'PromQL queries; `$pool` is replaced by the name the router serves the pool under (namespace/name outside the router\'s namespace; the workers\' metrics carry it as their pool label); `$namespace` by the pool\'s namespace as a regex (`.*` where the router cannot tell). A query left unset takes the built-in default (set by the operator and the router, not by the chart): queueDepth sum by (worker) (switchyard_worker_queued_rows{pool="$pool", namespace=~"$namespace|"}), latencySeconds the 1m rate of switchyard_worker_run_duration_seconds_sum over that of _count, per worker. An empty string turns that signal off.',
      {
        queueDepth: str("One sample per worker (label worker): queued work in rows (token-expert assignments).", {
          maxLength: 4096,
        }),
        latencySeconds: str("One sample per worker (label worker): recent run latency in seconds.", {
          maxLength: 4096,
        }),
      },
      { default: {} },
    ),
    refreshMs: int("Interval between query rounds (ms).", { minimum: 100, maximum: 3600000, default: 5000 }),
    stalenessMs: int("Signals older than this are stale and ignored (ms).", {
      minimum: 100,
      maximum: 86400000,
      default: DEFAULT_STALENESS_MS,
    }),
    // No schema default: a default of 2000 would break the rule below for refreshMs < 2000 the user never paired
    // with a timeout. Unset, the router takes min(2000, refreshMs) (packages/moe resolveRoutingPolicy).
    timeoutMs: int("Per-query HTTP timeout (ms), at most refreshMs; unset = min(2000, refreshMs).", {
      minimum: 10,
      maximum: 600000,
    }),
  },
  {
    default: {},
    validations: [
      {
        // As batching's rule: the default is filled in before the rule runs, so the message names it at its value.
        rule: "self.stalenessMs >= self.refreshMs",
        message: "loadSignals.stalenessMs must be >= loadSignals.refreshMs",
        messageExpression: `self.stalenessMs == ${DEFAULT_STALENESS_MS} ? 'loadSignals.stalenessMs must be >= loadSignals.refreshMs (stalenessMs defaults to ${DEFAULT_STALENESS_MS} when unset; set it too)' : 'loadSignals.stalenessMs must be >= loadSignals.refreshMs'`,
        fieldPath: ".stalenessMs",
      },
      {
        rule: "!has(self.timeoutMs) || self.timeoutMs <= self.refreshMs",
        message: "loadSignals.timeoutMs must be <= loadSignals.refreshMs",
        fieldPath: ".timeoutMs",
      },
    ],
  },
);

export const routingPolicySpecSchema = obj(
  "How the router treats one ExpertPool.",
  {
    poolRef: obj(
      "The ExpertPool (same namespace) this policy applies to.",
      { name: str("ExpertPool name.", { maxLength: 253, minLength: 1 }) },
      { required: ["name"] },
    ),
    gating: gatingSchema,
    batching: batchingSchema,
    placement: placementWeightsSchema,
    loadSignals: loadSignalsSchema,
  },
  {
    required: ["poolRef"],
    validations: [
      {
        rule: "self.poolRef.name == oldSelf.poolRef.name",
        message: "poolRef.name is immutable; create a new RoutingPolicy instead",
        fieldPath: ".poolRef.name",
      },
    ],
  },
);
export type RoutingPolicySpec = Infer<typeof routingPolicySpecSchema>;

export const routingPolicyStatusSchema = obj("Observed state of a RoutingPolicy.", {
  observedGeneration: int("metadata.generation this status describes.", { format: "int64" }),
  conditions,
  configMap: str(
    "The router's ConfigMap the resolved policy is published in, as <namespace>/<name> (the operator's --router-configmap); key router.json holds every pool's router config, this policy's under its pool (past 256 KiB gzipped, as router.json.gz).",
    { maxLength: 253 },
  ),
  effective: freeform(
    "The resolved policy the router uses: spec with defaults filled in, and the gating figures that come from the pool's model: under top-k gating (no topP) gating.topK, unset = the model's topK; under top-p, gating.maxK, unset = max(topK, 2 × the model's topK), at most the pool's experts.",
  ),
});
export type RoutingPolicyStatus = Infer<typeof routingPolicyStatusSchema>;

// ---------- object types ----------

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface ExpertPool {
  apiVersion: typeof API_VERSION;
  kind: "ExpertPool";
  metadata: ObjectMeta;
  spec: ExpertPoolSpec;
  status?: ExpertPoolStatus;
}

export interface RoutingPolicy {
  apiVersion: typeof API_VERSION;
  kind: "RoutingPolicy";
  metadata: ObjectMeta;
  spec: RoutingPolicySpec;
  status?: RoutingPolicyStatus;
}
