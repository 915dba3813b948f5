// The files of a resumable download on the disk: the partial bytes (NAME.resumable) and the record of what they were
// started against (NAME.resumable.json). Separate from resume.ts, which decides what they are worth, and from
// download.ts, which writes them.

import { readdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { type Ctx, RESUMABLE, RESUMABLE_FILE } from "./context.js";
import { writeAtomic } from "./files.js";
import { type PartialRecord, parseRecord } from "./resume.js";

export interface PartialPaths {
  data: string;
  record: string;
}

export function partialPaths(final: string): PartialPaths {
  return { data: `${final}${RESUMABLE}`, record: `${final}${RESUMABLE}.json` };
}

/**
 * The partial an earlier run left for a file, or undefined when there is none. `record` is undefined when the record
 * is missing or unreadable (the partial is then not trusted).
 */
export async function readPartial(p: PartialPaths): Promise<{ record?: PartialRecord; bytes: number } | undefined> {
  let bytes: number;
  try {
    bytes = (await stat(p.data)).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT")
      throw new Error(`${p.data}: cannot read (${(e as Error).message})`);
    // A record without bytes: the run was killed between the two, or after the rename that completed the file.
    await rm(p.record, { force: true });
    return undefined;
  }
  let text: string | undefined;
  try {
    text = await readFile(p.record, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT")
      throw new Error(`${p.record}: cannot read (${(e as Error).message})`);
  }
  return { record: text === undefined ? undefined : parseRecord(text), bytes };
}

/** Written whole or not at all: a torn record would vouch for bytes it does not describe. */
export function writeRecord(p: PartialPaths, r: PartialRecord): Promise<void> {
  return writeAtomic(p.record, `${JSON.stringify(r)}\n`);
}

/** The bytes first: a record left alone is removed by the next readPartial, bytes left alone are not trusted. */
export async function discardPartial(p: PartialPaths): Promise<void> {
  await rm(p.data, { force: true });
  await rm(p.record, { force: true });
}

/**
 * Partials of files the checkpoint no longer has (its index changed since they were started): nothing will resume
 * them, and a shard's partial is gigabytes of the volume the download has to fit in.
 */
export async function removeStalePartials(ctx: Ctx, dir: string, files: ReadonlySet<string>): Promise<void> {
  const stale = (await readdir(dir)).filter((f) => {
    const m = RESUMABLE_FILE.exec(f);
    return m !== null && !files.has(f.slice(0, m.index));
  });
  for (const f of stale) await rm(join(dir, f), { force: true });
  if (stale.length > 0)
    ctx.log(`${dir}: removed ${stale.length} partial download file(s) of files this checkpoint no longer has`);
}
