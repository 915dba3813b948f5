// The checkpoint URI: which forms are accepted (https://, http://, hf://) and the base URL and headers each maps to.
// Separate because it is pure parsing, with no I/O, and the public checkpointSource needs nothing else.

export interface CheckpointSource {
  /** base URL the files are under, ends with "/" */
  base: string;
  headers: Record<string, string>;
}

const SUPPORTED =
  "supported: https://HOST/PATH/ or http://HOST/PATH/ (the checkpoint's directory), hf://ORG/NAME[@REVISION]; " +
  "for S3/GCS use the public https URL of the checkpoint's directory (a presigned URL signs one object, not a directory), or mount the checkpoint from a PVC";

function badUri(uri: string, why: string): Error {
  return new Error(`checkpoint.uri: ${JSON.stringify(uri)}: ${why} (${SUPPORTED})`);
}

// Hub repo ids: letters, digits, "-", "_", "." (no leading "." or "-"); revisions are branch/tag names or commits.
const HF_URI = /^hf:\/\/([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@([^\s?#@]+?))?\/?$/; // lazy: "@main/" is revision main

/**
 * https:// or http:// URL of the checkpoint's directory; hf://ORG/NAME[@REVISION] ->
 * ${HF_ENDPOINT ?? "https://huggingface.co"}/ORG/NAME/resolve/${REVISION ?? "main"}/ with
 * Authorization: Bearer ${HF_TOKEN} when env HF_TOKEN is set. Anything else throws an Error whose message starts with
 * "checkpoint.uri: " and says what is supported.
 */
export function checkpointSource(uri: string, env: NodeJS.ProcessEnv = process.env): CheckpointSource {
  const { base, headers } = source(uri, env);
  return { base, headers };
}

export interface Source extends CheckpointSource {
  /** hf:// only: ENDPOINT/ORG/NAME/resolve/, to which a commit and "/" are appended once the revision is resolved */
  hfResolve?: string;
  /** hf:// only: the revision asked for */
  revision?: string;
}

export function source(uri: string, env: NodeJS.ProcessEnv = process.env): Source {
  if (typeof uri !== "string" || uri.trim() === "") throw badUri(String(uri), "empty");
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(uri)?.[1]?.toLowerCase();
  if (scheme === "hf") {
    const m = HF_URI.exec(uri);
    if (!m) throw badUri(uri, "expected hf://ORG/NAME or hf://ORG/NAME@REVISION");
    const [, org, name, revision = "main"] = m;
    // "." or ".." as the revision, or as a part of one, would lead the URL out of resolve/ (URL resolution
    // removes dot segments): hf://org/name@.. would fetch org/name/config.json, not a revision's.
    if (revision.split("/").some((seg) => seg === "." || seg === ".."))
      throw badUri(uri, `revision ${JSON.stringify(revision)}: "." and ".." are not revisions`);
    const endpoint = (env.HF_ENDPOINT?.trim() || "https://huggingface.co").replace(/\/+$/, "");
    if (!/^https?:\/\/[^/]/i.test(endpoint))
      throw new Error(`HF_ENDPOINT: must be an http(s) URL, got ${JSON.stringify(env.HF_ENDPOINT)} (for ${uri})`);
    const headers: Record<string, string> = {};
    const token = env.HF_TOKEN?.trim();
    if (token) headers["authorization"] = `Bearer ${token}`;
    // A revision may be a branch like "refs/pr/1": the Hub takes it URL-encoded as one path segment.
    const hfResolve = `${endpoint}/${org}/${name}/resolve/`;
    return { base: `${hfResolve}${encodeURIComponent(revision)}/`, headers, hfResolve, revision };
  }
  if (scheme === "https" || scheme === "http") {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      throw badUri(uri, "not a valid URL");
    }
    // A query (a presigned URL's signature) belongs to one object: it cannot be carried to the other files.
    if (url.search || url.hash) throw badUri(uri, "a query string or fragment cannot apply to every file");
    // fetch refuses URLs with credentials; say so here, where the uri is named.
    if (url.username || url.password) throw badUri(uri, "credentials in the URL are not supported");
    const base = url.href.endsWith("/") ? url.href : `${url.href}/`;
    return { base, headers: {} };
  }
  if (scheme === "s3" || scheme === "gs" || scheme === "gcs") throw badUri(uri, `${scheme}:// is not fetched directly`);
  if (scheme === undefined || uri.startsWith("/") || uri.startsWith("."))
    throw badUri(uri, "a file path is not a URI (mount it from a PVC or host path instead)");
  throw badUri(uri, `unsupported scheme ${scheme}://`);
}
