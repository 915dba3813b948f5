// The directory's marker file: which checkpoint (uri, kind) it holds, whether complete, and each file's version.
// Separate so both kinds of fetch read, write and check it the same way.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { MARKER, MARKER_VERSION, type Marker } from "./context.js";
import { writeAtomic } from "./files.js";

export async function readMarker(dir: string): Promise<Marker | undefined> {
  const path = join(dir, MARKER);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    const m = JSON.parse(text) as Marker;
    if (typeof m.uri === "string" && (m.kind === "whole" || m.kind === "tensors")) {
      if (
        m.version === MARKER_VERSION &&
        (m.files === undefined || (typeof m.files === "object" && !Array.isArray(m.files)))
      )
        return m;
      // Written before versions were recorded: what it lists may mix revisions; only its uri still counts.
      return { uri: m.uri, kind: m.kind, complete: false };
    }
  } catch {
    // fall through
  }
  throw new Error(`${path}: not a checkpoint marker; remove it or use an empty directory`);
}

export function writeMarker(dir: string, m: Marker): Promise<void> {
  return writeAtomic(join(dir, MARKER), `${JSON.stringify({ ...m, version: MARKER_VERSION }, null, 2)}\n`);
}

/**
 * Refuse a directory that holds (part of) another checkpoint: skipping files present under their names would mix
 * two checkpoints' files.
 */
export function checkMarker(dir: string, m: Marker | undefined, uri: string, kind: Marker["kind"]): void {
  if (m && (m.uri !== uri || m.kind !== kind)) {
    const what = m.kind === "whole" ? "checkpoint" : "router tensors of";
    throw new Error(
      `${dir}: holds ${m.complete ? "" : "part of "}the ${what} ${m.uri}, not ${uri}: use another directory or empty it`,
    );
  }
}
