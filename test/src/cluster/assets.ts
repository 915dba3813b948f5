// Where the cluster binaries come from: $KUBEBUILDER_ASSETS first (envtest convention, so official binaries work),
// then <repo>/.cache/test-assets/bin, which scripts/ci/build-test-assets.sh fills.
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ASSET_NAMES = [
  "etcd",
  "kube-apiserver",
  "kube-controller-manager",
  "kube-scheduler",
  "kubectl",
  "kwok",
  "helm",
] as const;
export type AssetName = (typeof ASSET_NAMES)[number];

/** The repository root: the nearest ancestor whose package.json declares workspaces. */
export function repoRoot(from: string = dirname(fileURLToPath(import.meta.url))): string {
  let dir = resolve(from);
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        if (JSON.parse(readFileSync(pkg, "utf8")).workspaces) return dir;
      } catch {}
    }
    const up = dirname(dir);
    if (up === dir) throw new Error(`no repository root (package.json with workspaces) above ${from}`);
    dir = up;
  }
}

export function defaultAssetsDir(): string {
  return join(repoRoot(), ".cache", "test-assets", "bin");
}

/** Directories searched, in order. */
export function assetDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  const dirs: string[] = [];
  if (env.KUBEBUILDER_ASSETS) dirs.push(resolve(env.KUBEBUILDER_ASSETS));
  const def = defaultAssetsDir();
  if (!dirs.includes(def)) dirs.push(def);
  return dirs;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export interface AssetLookup {
  found: Partial<Record<AssetName, string>>;
  missing: AssetName[];
  searched: string[];
}

export function findAssets(names: readonly AssetName[], env: NodeJS.ProcessEnv = process.env): AssetLookup {
  const searched = assetDirs(env);
  const found: Partial<Record<AssetName, string>> = {};
  const missing: AssetName[] = [];
  for (const name of names) {
    const hit = searched.map((d) => join(d, name)).find(isExecutable);
    if (hit) found[name] = hit;
    else missing.push(name);
  }
  return { found, missing, searched };
}

/** The message every caller shows when binaries are missing: what, where it looked, how to fix. */
export function missingAssetsMessage(lookup: AssetLookup): string {
  return (
    `test cluster binaries missing: ${lookup.missing.join(", ")} (looked in ${lookup.searched.join(", ")}). ` +
    "Build them with `bash scripts/ci/build-test-assets.sh` (about 11 min cold on 2 cores, under a minute with warm Go caches), " +
    "or set KUBEBUILDER_ASSETS to a directory holding them."
  );
}

/** CI must never silently skip cluster tests. */
export function isCI(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.CI;
  return v !== undefined && v !== "" && v !== "0" && v.toLowerCase() !== "false";
}
