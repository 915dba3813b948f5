// Thin I/O helpers around the real helm and promtool binaries for the chart tests.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, constants } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { parseAllDocuments, stringify } from "yaml";

const run = promisify(execFile);

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const CHART = join(REPO, "charts/switchyard");
/** Values files the chart is linted and rendered with, besides the defaults (name -> path). */
export const VALUES_FILES: Record<string, string | null> = {
  default: null,
  monitoring: join(CHART, "ci/monitoring-values.yaml"),
  production: join(CHART, "ci/production-values.yaml"),
  namespaced: join(CHART, "ci/namespaced-values.yaml"),
};

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Finds a tool the way the test cluster does: an explicit env override, the built test assets
 * (scripts/ci/build-test-assets.sh), KUBEBUILDER_ASSETS, then PATH. Null when absent.
 */
export function findTool(name: string, envVar?: string): string | null {
  const candidates: string[] = [];
  if (envVar && process.env[envVar]) candidates.push(process.env[envVar]!);
  candidates.push(join(REPO, ".cache/test-assets/bin", name));
  if (process.env.KUBEBUILDER_ASSETS) candidates.push(join(process.env.KUBEBUILDER_ASSETS, name));
  for (const dir of (process.env.PATH ?? "").split(delimiter)) if (dir) candidates.push(join(dir, name));
  const found = candidates.find(executable) ?? null;
  if (!found) {
    const why = `${name} not found (.cache/test-assets/bin, KUBEBUILDER_ASSETS, PATH${envVar ? `, ${envVar}` : ""}); scripts/ci/build-test-assets.sh and scripts/ci/install-system-deps.sh provide it`;
    // CI installs every tool: a missing one there is a broken setup, never a green run of skipped tests.
    if (process.env.CI === "true") throw new Error(why);
    console.warn(`tests that need ${name} SKIPPED: ${why}`);
  }
  return found;
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool and returns its exit code and output instead of throwing, so tests can assert on failures. */
export async function exec(bin: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  try {
    const { stdout, stderr } = await run(bin, args, {
      cwd: opts.cwd ?? REPO,
      env: opts.env ?? process.env,
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr } satisfies ToolResult;
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; message: string };
    if (typeof e.code !== "number") throw err; // ENOENT and friends: the tool itself is missing
    return { code: e.code, stdout: e.stdout ?? "", stderr: e.stderr ?? e.message } satisfies ToolResult;
  }
}

export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
};

/** Parses multi-document YAML, dropping empty documents; throws on YAML errors. */
export function parseDocs(text: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`YAML error: ${doc.errors[0].message}`);
    const value = doc.toJS();
    if (value) out.push(value as K8sObject);
  }
  return out;
}

export const RELEASE = "sy";
export const NAMESPACE = "switchyard-system";

export function templateArgs(valuesFile: string | null, extra: string[] = []): string[] {
  return ["template", RELEASE, CHART, "--namespace", NAMESPACE, ...(valuesFile ? ["-f", valuesFile] : []), ...extra];
}

/** Stable text for golden files: objects sorted by kind/namespace/name, keys sorted, helm's "# Source" comments gone. */
// Dashboard JSON is checked byte for byte elsewhere; goldens keep a digest so they stay readable.
export function canonical(objects: K8sObject[]): string {
  const digestDashboards = (o: K8sObject): K8sObject => {
    if (o.kind !== "ConfigMap" || !o.metadata.labels?.grafana_dashboard) return o;
    const data = Object.fromEntries(
      Object.entries(o.data as Record<string, string>).map(([k, v]) => [
        k,
        `sha256:${createHash("sha256").update(v).digest("hex")} (${v.length} bytes)`,
      ]),
    );
    return { ...o, data };
  };
  const key = (o: K8sObject) => `${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`;
  return [...objects]
    .sort((a, b) => key(a).localeCompare(key(b)))
    .map(digestDashboards)
    .map((o) => stringify(o, { sortMapEntries: true, lineWidth: 0 }))
    .join("---\n");
}

export interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

/** "group/resource verb" strings, so rules split or merged differently still compare equal. */
export function grants(rules: Rule[]): string[] {
  const out = new Set<string>();
  for (const r of rules)
    for (const g of r.apiGroups)
      for (const res of r.resources) for (const v of r.verbs) out.add(`${g || "core"}/${res} ${v}`);
  return [...out].sort();
}
