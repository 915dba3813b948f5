// Builds the two CustomResourceDefinitions from the schema definitions in ../api/v1alpha1.ts.
import { dump } from "js-yaml";
import { clean, type JsonSchema } from "../api/schema.js";
import {
  expertPoolMetadataSchema,
  expertPoolSpecSchema,
  expertPoolStatusSchema,
  GROUP,
  routingPolicySpecSchema,
  routingPolicyStatusSchema,
  VERSION,
} from "../api/v1alpha1.js";

export const CATEGORY = "switchyard";

interface Column {
  name: string;
  type: "string" | "integer" | "number" | "boolean" | "date";
  jsonPath: string;
  description: string;
  priority?: number;
}

interface CrdInput {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  description: string;
  spec: JsonSchema;
  status: JsonSchema;
  /** Constraints on metadata.name (the only part of metadata a CRD may constrain, with generateName). */
  metadata?: JsonSchema;
  columns: Column[];
  scale?: boolean;
}

function crd(i: CrdInput): Record<string, unknown> {
  const root: JsonSchema = {
    description: i.description,
    type: "object",
    required: ["spec"],
    properties: {
      apiVersion: { type: "string", description: "APIVersion of this object: switchyard.dev/v1alpha1." },
      kind: { type: "string", description: `Kind of this object: ${i.kind}.` },
      metadata: i.metadata ?? { type: "object" },
      spec: i.spec,
      status: i.status,
    },
  };
  return clean({
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: {
      name: `${i.plural}.${GROUP}`,
      labels: { "app.kubernetes.io/name": "switchyard", "app.kubernetes.io/component": "crd" },
    },
    spec: {
      group: GROUP,
      names: {
        kind: i.kind,
        listKind: `${i.kind}List`,
        plural: i.plural,
        singular: i.singular,
        shortNames: i.shortNames,
        categories: [CATEGORY],
      },
      scope: "Namespaced",
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          schema: { openAPIV3Schema: root },
          subresources: {
            status: {},
            scale: i.scale
              ? {
                  specReplicasPath: ".spec.replicas",
                  statusReplicasPath: ".status.replicas",
                  labelSelectorPath: ".status.selector",
                }
              : undefined,
          },
          additionalPrinterColumns: i.columns,
        },
      ],
    },
  });
}

const READY = '.status.conditions[?(@.type=="Ready")]';

export function expertPoolCrd(): Record<string, unknown> {
  return crd({
    kind: "ExpertPool",
    plural: "expertpools",
    singular: "expertpool",
    shortNames: ["xp", "xpool"],
    description:
      "ExpertPool: one MoE model's routed experts served by a set of GPU workers (a StatefulSet, a headless Service and a placement plan).",
    spec: expertPoolSpecSchema.json,
    status: expertPoolStatusSchema.json,
    metadata: expertPoolMetadataSchema,
    scale: true,
    columns: [
      { name: "Ready", type: "string", jsonPath: `${READY}.status`, description: "Ready condition." },
      { name: "Replicas", type: "integer", jsonPath: ".spec.replicas", description: "Desired workers." },
      { name: "Available", type: "integer", jsonPath: ".status.readyReplicas", description: "Ready workers." },
      { name: "Model", type: "string", jsonPath: ".spec.model.architecture", description: "Model family." },
      {
        name: "Experts",
        type: "integer",
        jsonPath: ".spec.model.experts",
        description: "Routed experts per layer.",
        priority: 1,
      },
      {
        name: "Layers",
        type: "integer",
        jsonPath: ".spec.model.layers",
        description: "Decoder layers, dense ones included (model.layers).",
        priority: 1,
      },
      {
        name: "Plan",
        type: "integer",
        jsonPath: ".status.placement.version",
        description: "Placement plan version.",
        priority: 1,
      },
      {
        name: "Reason",
        type: "string",
        jsonPath: `${READY}.reason`,
        description: "Why Ready is what it is.",
        priority: 1,
      },
      { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp", description: "Time since creation." },
    ],
  });
}

export function routingPolicyCrd(): Record<string, unknown> {
  return crd({
    kind: "RoutingPolicy",
    plural: "routingpolicies",
    singular: "routingpolicy",
    shortNames: ["xrp", "rpol"],
    description:
      "RoutingPolicy: how the router treats one ExpertPool (gating, batching, replica choice, load signals). The operator resolves it into the router's config.",
    spec: routingPolicySpecSchema.json,
    status: routingPolicyStatusSchema.json,
    columns: [
      { name: "Pool", type: "string", jsonPath: ".spec.poolRef.name", description: "Target ExpertPool." },
      { name: "Ready", type: "string", jsonPath: `${READY}.status`, description: "Ready condition." },
      // status.effective fills in what comes from the pool's model (routing.ts effectivePolicy), so under top-k
      // gating TopK is never blank; under top-p the experts per token vary, up to MaxK, and TopK shows only a topK
      // the policy set (which then only feeds maxK's default).
      {
        name: "TopK",
        type: "integer",
        jsonPath: ".status.effective.gating.topK",
        description: "Experts per token under top-k gating: gating.topK, else the pool's model.topK.",
      },
      {
        name: "TopP",
        type: "number",
        jsonPath: ".status.effective.gating.topP",
        description: "Top-p threshold of dynamic routing; blank: top-k gating.",
      },
      {
        name: "MaxK",
        type: "integer",
        jsonPath: ".status.effective.gating.maxK",
        description:
          "Under top-p, the most experts a token goes to (gating.maxK, else its default); blank: top-k gating.",
      },
      {
        name: "Reason",
        type: "string",
        jsonPath: `${READY}.reason`,
        description: "Why Ready is what it is.",
        priority: 1,
      },
      { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp", description: "Time since creation." },
    ],
  });
}

const YAML_OPTS = { lineWidth: 120, noRefs: true, quotingType: '"' } as const;

const HEADER = "# Generated by `npm run gen:crds` from operator/src/api/v1alpha1.ts. Do not edit.\n";

/** The committed files, path (relative to the repo root) -> CRD object. */
export function crdFiles(): Record<string, Record<string, unknown>> {
  return {
    "crds/switchyard.dev_expertpools.yaml": expertPoolCrd(),
    "crds/switchyard.dev_routingpolicies.yaml": routingPolicyCrd(),
  };
}

/** YAML text for one CRD (gen.ts then runs biome's formatter over it, as `npm run lint` expects). */
export function renderCrd(crd: Record<string, unknown>): string {
  return HEADER + dump(crd, YAML_OPTS);
}
