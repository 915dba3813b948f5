// Reading the router config file (docs/CONTRACTS.md "Router config"). The operator writes a config past 256 KiB
// gzipped, as the ConfigMap key router.json.gz, and router.json then holds only {"gzipFile": "router.json.gz"}: a
// ConfigMap holds at most 1 MiB, and every pool's plan is inline. Both keys are files of one mounted directory,
// swapped together by the kubelet.
import { readFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";

const gunzipAsync = promisify(gunzip);

/** A config inflates to far less than this (1 MiB of gzip at ~80x); more is a corrupt or hostile file. */
const MAX_INFLATED_BYTES = 512 * 1024 * 1024;

export interface ConfigFile {
  /** The config document, parsed but not validated (parseRouterConfig). */
  doc: unknown;
  /** The files it was read from (watch them all). */
  files: string[];
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: not valid JSON (${(e as Error).message})`);
  }
}

async function read(path: string, what: string): Promise<Buffer> {
  return readFile(path).catch((e: Error) => {
    throw new Error(`${what} ${path}: cannot read (${e.message})`);
  });
}

/** Reads `path`, following a {"gzipFile": NAME} pointer to NAME beside it; errors name the file and the field. */
export async function readConfigFile(path: string): Promise<ConfigFile> {
  const doc = parseJson((await read(path, "config")).toString("utf8"), `config ${path}`);
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || !("gzipFile" in doc))
    return { doc, files: [path] };
  const keys = Object.keys(doc);
  if (keys.length !== 1)
    throw new Error(`config ${path}: a gzipFile pointer holds no other field (found ${keys.join(", ")})`);
  const name = (doc as { gzipFile: unknown }).gzipFile;
  // Only a file beside this one: the pointer comes from a ConfigMap, and names one of its own keys.
  if (typeof name !== "string" || name === "" || basename(name) !== name || name === "." || name === "..")
    throw new Error(`config ${path}: gzipFile must be a file name beside it, got ${JSON.stringify(name)}`);
  const gzPath = join(dirname(path), name);
  let text: string;
  try {
    text = (await gunzipAsync(await read(gzPath, "config.gzipFile"), { maxOutputLength: MAX_INFLATED_BYTES })).toString(
      "utf8",
    );
  } catch (e) {
    if ((e as Error).message.startsWith("config.gzipFile ")) throw e;
    throw new Error(`config.gzipFile ${gzPath}: not a gzip stream of the config (${(e as Error).message})`);
  }
  return { doc: parseJson(text, `config.gzipFile ${gzPath}`), files: [path, gzPath] };
}
