// A small typed builder for OpenAPI v3 structural schemas (the dialect of apiextensions.k8s.io/v1).
// One definition yields both the CRD YAML (via `.json`) and the TypeScript type (via `Infer<>`), so the two
// cannot drift: the committed crds/*.yaml are regenerated from these definitions and a test compares them.
//
// Typing rule: a property is present in the inferred type when it is `required` or has a `default` (the API
// server applies defaults on every read, so the operator always sees them); otherwise it is optional.
// `applyDefaults` mirrors the server's defaulting so unit tests can build objects the way the server would.

export interface ValidationRule {
  rule: string;
  message: string;
  /** Evaluated for the message when the rule fails (the message is the fallback if it errors). */
  messageExpression?: string;
  fieldPath?: string;
  reason?: "FieldValueInvalid" | "FieldValueForbidden" | "FieldValueRequired" | "FieldValueDuplicate";
}

/** The subset of JSONSchemaProps this project uses. Key order here is the order written to YAML. */
export interface JsonSchema {
  description?: string;
  type?: "object" | "array" | "string" | "integer" | "number" | "boolean";
  format?: string;
  enum?: readonly (string | number)[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  maxProperties?: number;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  additionalProperties?: JsonSchema;
  required?: string[];
  anyOf?: JsonSchema[];
  "x-kubernetes-int-or-string"?: boolean;
  "x-kubernetes-list-type"?: "atomic" | "set" | "map";
  "x-kubernetes-list-map-keys"?: string[];
  "x-kubernetes-map-type"?: "atomic" | "granular";
  "x-kubernetes-preserve-unknown-fields"?: boolean;
  "x-kubernetes-validations"?: ValidationRule[];
}

/** A schema node carrying its TypeScript type `T` and whether it has a default `D` (phantom parameters). */
export interface Schema<T, D extends boolean = boolean> {
  readonly json: JsonSchema;
  readonly __type?: T;
  readonly __defaulted?: D;
}

export type Infer<S> = S extends Schema<infer T, boolean> ? T : never;

type Simplify<T> = { [K in keyof T]: T[K] } & {};
type AnySchema = Schema<unknown, boolean>;
type Props = Record<string, AnySchema>;
type PresentKeys<P extends Props, R extends keyof P> = {
  [K in keyof P]: K extends R ? K : P[K] extends Schema<unknown, true> ? K : never;
}[keyof P];
export type ObjectOf<P extends Props, R extends keyof P = never> = Simplify<
  { [K in PresentKeys<P, R>]: Infer<P[K]> } & { [K in Exclude<keyof P, PresentKeys<P, R>>]?: Infer<P[K]> }
>;

type Defaulted<O> = O extends { default: unknown } ? true : false;

function node<T, D extends boolean>(json: JsonSchema): Schema<T, D> {
  return { json };
}

interface Common<V> {
  default?: V;
  validations?: ValidationRule[];
}

export interface IntOptions extends Common<number> {
  minimum?: number;
  maximum?: number;
  format?: "int32" | "int64";
}
export function int<const O extends IntOptions>(description: string, o: O = {} as O): Schema<number, Defaulted<O>> {
  return node({
    description,
    type: "integer",
    format: o.format ?? "int32",
    default: o.default,
    minimum: o.minimum,
    maximum: o.maximum,
    "x-kubernetes-validations": o.validations,
  });
}

export interface NumOptions extends Common<number> {
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
}
export function num<const O extends NumOptions>(description: string, o: O = {} as O): Schema<number, Defaulted<O>> {
  return node({
    description,
    type: "number",
    default: o.default,
    minimum: o.minimum,
    exclusiveMinimum: o.exclusiveMinimum,
    maximum: o.maximum,
    "x-kubernetes-validations": o.validations,
  });
}

export function bool<const O extends Common<boolean>>(
  description: string,
  o: O = {} as O,
): Schema<boolean, Defaulted<O>> {
  return node({ description, type: "boolean", default: o.default });
}

export interface StrOptions extends Common<string> {
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  format?: string;
}
export function str<const O extends StrOptions>(description: string, o: O = {} as O): Schema<string, Defaulted<O>> {
  return node({
    description,
    type: "string",
    format: o.format,
    default: o.default,
    minLength: o.minLength,
    maxLength: o.maxLength,
    pattern: o.pattern,
    "x-kubernetes-validations": o.validations,
  });
}

export function enm<const V extends string, const O extends Common<V> = Common<V>>(
  description: string,
  values: readonly V[],
  o: O = {} as O,
): Schema<V, Defaulted<O>> {
  return node({ description, type: "string", enum: values, default: o.default });
}

/**
 * A Kubernetes quantity ("1", "500m", "16Gi"): int-or-string, as core/v1 ResourceList values are. Never negative:
 * every quantity this API takes is a resource amount or a size, and core/v1 refuses a negative one only when the
 * operator's StatefulSet is applied, long after the pool was accepted. A leading "+" stays valid (core/v1 takes it).
 */
export function quantity(description: string): Schema<string | number, false> {
  return node({
    description,
    anyOf: [{ type: "integer" }, { type: "string" }],
    "x-kubernetes-int-or-string": true,
    minimum: 0, // an integer quantity (the pattern checks strings only)
    maxLength: 64, // bounds the cost of CEL rules that parse quantities (v1alpha1.ts worker.resources)
    pattern:
      "^\\+?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$",
  });
}

/** A free-form object the server keeps as is (x-kubernetes-preserve-unknown-fields). */
export function freeform(description: string): Schema<Record<string, unknown>, false> {
  return node({ description, type: "object", "x-kubernetes-preserve-unknown-fields": true });
}

export interface ArrOptions<T> extends Common<T[]> {
  minItems?: number;
  maxItems: number; // always bounded: CEL cost estimation needs it, and so do sane objects
  listType?: "atomic" | "set" | "map";
  listMapKeys?: string[];
}
export function arr<I extends AnySchema, const O extends ArrOptions<Infer<I>>>(
  description: string,
  items: I,
  o: O,
): Schema<Infer<I>[], Defaulted<O>> {
  return node({
    description,
    type: "array",
    default: o.default,
    minItems: o.minItems,
    maxItems: o.maxItems,
    items: items.json,
    "x-kubernetes-list-type": o.listType ?? (o.listMapKeys ? "map" : "atomic"),
    "x-kubernetes-list-map-keys": o.listMapKeys,
    "x-kubernetes-validations": o.validations,
  });
}

export interface MapOptions extends Common<Record<string, unknown>> {
  maxProperties: number;
}
export function map<V extends AnySchema, const O extends MapOptions>(
  description: string,
  values: V,
  o: O,
): Schema<Record<string, Infer<V>>, Defaulted<O>> {
  return node({
    description,
    type: "object",
    default: o.default,
    maxProperties: o.maxProperties,
    additionalProperties: values.json,
    "x-kubernetes-validations": o.validations,
  });
}

export interface ObjOptions<R> extends Common<Record<string, never>> {
  required?: readonly R[];
}
export function obj<
  P extends Props,
  const R extends keyof P & string = never,
  const O extends ObjOptions<R> = ObjOptions<R>,
>(
  description: string,
  properties: P,
  o: O & ObjOptions<R> = {} as O & ObjOptions<R>,
): Schema<ObjectOf<P, R>, Defaulted<O>> {
  const props: Record<string, JsonSchema> = {};
  for (const [k, v] of Object.entries(properties)) props[k] = v.json;
  // The API server checks a default against the object's CEL rules without first defaulting inside it, so
  // `default: {}` is written out with its nested defaults filled in.
  const dflt = o.default === undefined ? undefined : applyDefaults({ type: "object", properties: props }, o.default);
  return node({
    description,
    type: "object",
    default: dflt,
    properties: props,
    required: o.required && o.required.length > 0 ? [...o.required] : undefined,
    "x-kubernetes-validations": o.validations,
  });
}

/** Drops undefined keys (builders set them freely) so the YAML holds only what was said. */
export function clean<T>(v: T): T {
  if (Array.isArray(v)) return v.map(clean) as T;
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = clean(x);
    return out as T;
  }
  return v;
}

/**
 * Applies schema defaults the way the API server's structural defaulting does: a missing property with a
 * `default` gets a deep copy of it, and defaulting then continues inside it (so `default: {}` on an object
 * fills that object's own defaulted fields). Unknown fields are left alone (the server would prune them).
 */
export function applyDefaults(schema: JsonSchema, value: unknown): unknown {
  if (value === undefined) {
    if (schema.default === undefined) return undefined;
    value = structuredClone(schema.default);
  }
  if (schema.type === "object" && value && typeof value === "object" && !Array.isArray(value)) {
    const o = { ...(value as Record<string, unknown>) };
    for (const [k, s] of Object.entries(schema.properties ?? {})) {
      const d = applyDefaults(s, o[k]);
      if (d !== undefined) o[k] = d;
    }
    if (schema.additionalProperties) {
      for (const k of Object.keys(o)) o[k] = applyDefaults(schema.additionalProperties, o[k]);
    }
    return o;
  }
  if (schema.type === "array" && Array.isArray(value) && schema.items) {
    const items = schema.items;
    return value.map((x) => applyDefaults(items, x));
  }
  return value;
}
