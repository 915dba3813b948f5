// Whether the files a marker vouches for are still there and whole, without a request: a restarted pod must not
// trust a directory whose files were removed, cut short or overwritten since (a volume restored in part, a hand
// edit). Separate from the fetches, which decide what to do about it (fetch those files again).

import { stat } from "node:fs/promises";
import { join } from "node:path";
import { MAX_CONFIG_BYTES, MAX_INDEX_BYTES, readCheckpointJson } from "../checkpoint.js";
import { SafetensorsFile } from "../safetensors.js";
import type { Pin } from "./context.js";
import { pool } from "./files.js";

/**
 * The files of `files` (name -> what was recorded when it was fetched) that are missing or damaged, each with why:
 * not a regular file, another size than recorded, a safetensors header that does not parse or whose tensors run
 * past the file's end, a JSON file that does not parse. Reads headers only: a shard's data is not hashed.
 */
export async function damagedFiles(dir: string, files: Record<string, Pin>): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  await pool(Object.entries(files), 8, async ([name, pin]) => {
    const why = await damage(join(dir, name), name, pin);
    if (why) out.set(name, why);
  });
  return out;
}

async function damage(path: string, name: string, pin: Pin): Promise<string | undefined> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) return `${path} is not a regular file`;
    size = st.size;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT" ? `${path} is missing` : `${path}: ${(e as Error).message}`;
  }
  if (Number.isSafeInteger(pin.size) && size !== pin.size)
    return `${path} is ${size} bytes, ${pin.size} when it was fetched`;
  try {
    if (name.endsWith(".safetensors")) await (await SafetensorsFile.open(path)).close();
    else if (name.endsWith(".json"))
      await readCheckpointJson(path, name === "config.json" ? MAX_CONFIG_BYTES : MAX_INDEX_BYTES);
  } catch (e) {
    return (e as Error).message;
  }
  return undefined;
}
