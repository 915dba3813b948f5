// Only some tensors, by Range requests (fetchCheckpointTensors): the router's share of a checkpoint, and which
// tensors that is (routerTensorNames). Separate from the whole-checkpoint fetch: other requests, one output file.

import { type FileHandle, mkdir, open, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { failedPrecondition } from "@switchyard/protocol";
import {
  INDEX_FILE,
  MAX_CONFIG_BYTES,
  MAX_INDEX_BYTES,
  parseIndex,
  readCheckpointJson,
  routerTensorShapes,
  SINGLE_FILE,
  tensorMismatch,
} from "../checkpoint.js";
import {
  buildSafetensorsHeader,
  MAX_HEADER_BYTES,
  parseSafetensorsHeader,
  type SafetensorsDType,
  SafetensorsFile,
  type TensorInfo,
} from "../safetensors.js";
import { type ModelSpec, moeLayers, specFromHfConfig } from "../spec.js";
import {
  CONCURRENCY,
  type Ctx,
  commitOf,
  context,
  type FetchOptions,
  type Marker,
  pinCommit,
  urlOf,
} from "./context.js";
import { exists, mib, pool, removeLeftovers, temporary, writeAtomic } from "./files.js";
import { getRange, getSmall, parseJson, type RangePin, readRange } from "./http.js";
import { lockDir, stillLocked } from "./lock.js";
import { checkMarker, readMarker, writeMarker } from "./marker.js";
import { damagedFiles } from "./verify.js";
import { checkSafetensors, shardNames } from "./whole.js";

/**
 * A remote safetensors header: the 8-byte length, then the JSON; and the file's version as that first read showed it
 * (every later read of the file is held to it).
 */
async function remoteHeader(ctx: Ctx, file: string): Promise<{ tensors: Map<string, TensorInfo>; pin: RangePin }> {
  const url = urlOf(ctx, file);
  const { data: lenBytes, total, pin } = await readRange(ctx, url, 0, 8);
  if (!pin.validator)
    ctx.log(`${url}: no ETag or Last-Modified: only its size tells whether it is replaced while being read`);
  const len = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
  if (len === 0 || len > MAX_HEADER_BYTES)
    throw new Error(`${url}: bad safetensors header: header length ${len} out of range (1..${MAX_HEADER_BYTES})`);
  const { data: json } = await readRange(ctx, url, 8, 8 + len, pin);
  // Without a total size the truncation check cannot run here; a short tensor read still fails below.
  return { tensors: parseSafetensorsHeader(json, url, total ?? Number.MAX_SAFE_INTEGER).tensors, pin };
}

/** One request: a run of contiguous source bytes and where each wanted tensor in it goes in the output file. */
interface RangeJob {
  file: string;
  /** the file's version when its header was read */
  pin: RangePin;
  begin: number;
  end: number;
  parts: { begin: number; end: number; out: number }[];
}

/**
 * The router's share of a checkpoint: config.json plus only the named tensors, read with HTTP Range requests (each
 * shard's 8-byte header length and JSON header, then each wanted tensor's bytes), written into dir as config.json +
 * one model.safetensors holding just those tensors (same names, dtypes, shapes). `names(spec)` gets the spec parsed
 * from config.json (specFromHfConfig). An hf:// revision is resolved to a commit by config.json's answer, and the
 * rest is read from that commit. Each file is pinned by its first range read (its ETag, else Last-Modified, and its
 * size): a later read of another version, or one without the validator the first had, is an error. A server
 * that ignores Range (200 instead of 206) is an error naming the URL. A wanted tensor missing from the checkpoint is
 * an error naming it, and one whose dtype or shape is not what config.json says an error naming the URL, tensor and
 * config.json keys, before any tensor data is fetched. Skips everything when dir already holds the result for this
 * uri (marker) and its files are still whole on the disk. A lock file makes
 * concurrent callers on one directory wait for each other; the output is written under a temporary name of this
 * caller's own and renamed when whole.
 */
export async function fetchCheckpointTensors(
  uri: string,
  dir: string,
  names: (spec: ModelSpec) => string[],
  o: FetchOptions = {},
): Promise<{ tensors: number; bytes: number }> {
  const ctx = context(uri, o);
  await mkdir(dir, { recursive: true });
  const done = await tensorsDone(ctx, dir, uri, names, await readMarker(dir));
  if (done) return done;
  const unlock = await lockDir(ctx, dir);
  try {
    // Another caller may have finished it while this one waited for the lock.
    const marker = await readMarker(dir);
    return (await tensorsDone(ctx, dir, uri, names, marker)) ?? (await fetchTensors(ctx, uri, dir, names, marker));
  } finally {
    await unlock();
  }
}

async function tensorsDone(
  ctx: Ctx,
  dir: string,
  uri: string,
  names: (spec: ModelSpec) => string[],
  marker: Marker | undefined,
): Promise<{ tensors: number; bytes: number } | undefined> {
  checkMarker(dir, marker, uri, "tensors");
  if (!marker?.complete) return undefined;
  let held: { tensors: number } | { damage?: string };
  try {
    held = await heldTensors(dir, names, marker);
  } catch (e) {
    held = { damage: (e as Error).message };
  }
  if (!("tensors" in held)) {
    if (held.damage)
      ctx.log(`${dir}: marked complete, but ${held.damage}: fetching the router tensors of ${uri} again`);
    return undefined;
  }
  ctx.log(`${dir}: already holds the ${held.tensors} router tensors of ${uri}`);
  return { tensors: held.tensors, bytes: 0 };
}

/**
 * What a complete marker's directory holds, checked without a request: its files present, of the size written, the
 * header whole and holding every tensor wanted now; else the damage found (a volume restored in part, a file removed
 * or overwritten), or none when only other tensors are wanted now.
 */
async function heldTensors(
  dir: string,
  names: (spec: ModelSpec) => string[],
  marker: Marker,
): Promise<{ tensors: number } | { damage?: string }> {
  // a marker of an earlier version records no sizes: the files are then checked by their contents only
  const damaged = await damagedFiles(dir, marker.files ?? { "config.json": {}, [SINGLE_FILE]: {} });
  if (damaged.size > 0) return { damage: [...damaged.values()].join("; ") };
  // The names depend on the spec: the local config.json gives them without a request.
  const configPath = join(dir, "config.json");
  const wanted = [
    ...new Set(names(specFromHfConfig(await readCheckpointJson(configPath, MAX_CONFIG_BYTES), configPath))),
  ];
  if (!sameSet(wanted, marker.tensors ?? [])) return {};
  const file = await SafetensorsFile.open(join(dir, SINGLE_FILE));
  await file.close();
  const lost = wanted.find((t) => !file.header.tensors.has(t));
  return lost === undefined ? { tensors: wanted.length } : { damage: `${file.path} lacks tensor ${lost}` };
}

async function fetchTensors(
  ctx: Ctx,
  uri: string,
  dir: string,
  names: (spec: ModelSpec) => string[],
  marker: Marker | undefined,
): Promise<{ tensors: number; bytes: number }> {
  const configPath = join(dir, "config.json");
  // A whole checkpoint's index would make openCheckpoint look past the model.safetensors written here.
  if (!marker && (await exists(join(dir, INDEX_FILE))))
    throw new Error(`${dir}: holds ${INDEX_FILE} (a whole checkpoint?): use an empty directory for router tensors`);
  await removeLeftovers(ctx, dir);
  await writeMarker(dir, { uri, kind: "tensors", complete: false });

  // hf://: config.json's answer names the commit the revision is at; the index and the tensors come from that commit.
  const configUrl = urlOf(ctx, "config.json");
  let commit: string | undefined;
  const { bytes: configBytes } = (await getSmall(ctx, "config.json", {
    maxBytes: MAX_CONFIG_BYTES,
    firstHop: ctx.src.hfResolve
      ? (r) => {
          commit = commitOf(r);
        }
      : undefined,
  }))!;
  if (ctx.src.hfResolve) {
    if (commit) {
      pinCommit(ctx, commit);
      ctx.log(`${uri}: ${ctx.src.revision} is commit ${commit}`);
    } else ctx.log(`${configUrl}: no X-Repo-Commit header: the revision cannot be pinned to a commit`);
  }
  ctx.log(`fetching router tensors of ${uri} from ${ctx.src.base} into ${dir}`);
  const spec = specFromHfConfig(parseJson(configBytes, configUrl), configUrl);
  const wanted = [...new Set(names(spec))];

  // Which file holds each tensor.
  const indexUrl = urlOf(ctx, INDEX_FILE);
  const index = await getSmall(ctx, INDEX_FILE, { absentOk: true, maxBytes: MAX_INDEX_BYTES });
  const weightMap = index && parseIndex(parseJson(index.bytes, indexUrl), indexUrl);
  if (weightMap) shardNames(weightMap, indexUrl);
  const byFile = new Map<string, string[]>();
  for (const name of wanted) {
    const file = weightMap ? weightMap.get(name) : SINGLE_FILE;
    if (!file) throw new Error(`${indexUrl}: tensor ${name} is not in weight_map`);
    byFile.set(file, [...(byFile.get(file) ?? []), name]);
  }

  // Every needed header first: the output header (names, dtypes, shapes, offsets) is known before any data.
  const headers = new Map<string, { tensors: Map<string, TensorInfo>; pin: RangePin }>();
  await pool([...byFile.keys()], CONCURRENCY, async (file) => {
    headers.set(file, await remoteHeader(ctx, file));
  });
  // The router loads these with the shapes config.json gives (routerTensorShapes): a mismatch fails here, before any
  // data is fetched and the directory marked done, not when the router opens it.
  const expected = new Map(moeLayers(spec).flatMap((l) => routerTensorShapes(spec, l).map((t) => [t.name, t])));
  const infos: (TensorInfo & { file: string })[] = [];
  for (const [file, list] of byFile) {
    for (const name of list) {
      const info = headers.get(file)!.tensors.get(name);
      if (!info) throw new Error(`${urlOf(ctx, file)}: tensor ${name} not found in its safetensors header`);
      const want = expected.get(name);
      const wrong = want && tensorMismatch(info, want, configUrl);
      if (wrong) throw failedPrecondition(`${urlOf(ctx, file)}: ${wrong}`);
      infos.push({ ...info, file });
    }
  }
  // Source order, so that tensors stored side by side are read in one request.
  infos.sort((a, b) => (a.file === b.file ? a.begin - b.begin : a.file < b.file ? -1 : 1));
  const { header, dataBytes } = buildSafetensorsHeader(
    infos.map((t) => ({ name: t.name, dtype: t.dtype as SafetensorsDType, shape: t.shape })),
    { format: "pt" },
  );
  const jobs: RangeJob[] = [];
  let out = header.byteLength;
  for (const t of infos) {
    const last = jobs.at(-1);
    const part = { begin: t.begin, end: t.end, out };
    out += t.end - t.begin;
    if (t.end === t.begin) continue; // an empty tensor has no bytes to read
    if (last && last.file === t.file && last.end === t.begin) {
      last.end = t.end;
      last.parts.push(part);
    } else jobs.push({ file: t.file, pin: headers.get(t.file)!.pin, begin: t.begin, end: t.end, parts: [part] });
  }

  const outPath = join(dir, SINGLE_FILE);
  const tmp = temporary(outPath);
  try {
    const fh = await open(tmp, "wx");
    try {
      await fh.write(header, 0, header.byteLength, 0);
      // Sizes the file up front: a tensor left unwritten by a bug would read as zeros, so each range is checked below.
      await fh.truncate(header.byteLength + dataBytes);
      // One failed range stops the others.
      const stop = new AbortController();
      const signal = ctx.signal ? AbortSignal.any([ctx.signal, stop.signal]) : stop.signal;
      await pool(jobs, CONCURRENCY, async (job) => {
        try {
          await copyRange(ctx, job, fh, signal);
        } catch (e) {
          stop.abort(e);
          throw e;
        }
      });
      await fh.sync();
    } finally {
      await fh.close();
    }
    await checkSafetensors(tmp, tmp);
    stillLocked(ctx);
    await writeAtomic(configPath, configBytes);
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  const files = {
    "config.json": { size: configBytes.byteLength },
    [SINGLE_FILE]: { size: (await stat(outPath)).size },
  };
  await writeMarker(dir, { uri, kind: "tensors", complete: true, commit, tensors: wanted, files });
  ctx.log(
    `done: ${infos.length} tensors (${mib(dataBytes)}) from ${byFile.size} file(s) in ${jobs.length} range request(s), ` +
      `${mib(ctx.bytes)} downloaded`,
  );
  return { tensors: infos.length, bytes: ctx.bytes };
}

/** Stream one range into the output file, each wanted tensor's bytes to its place. */
async function copyRange(ctx: Ctx, job: RangeJob, fh: FileHandle, signal: AbortSignal): Promise<void> {
  const url = urlOf(ctx, job.file);
  const { got } = await getRange(ctx, url, job.begin, job.end, { signal, pin: job.pin });
  let at = job.begin; // source offset of the next byte
  for await (const c of got.chunks()) {
    const cEnd = at + c.byteLength;
    if (cEnd > job.end) {
      await got.cancel();
      throw new Error(`GET ${url} (bytes ${job.begin}-${job.end - 1}): more bytes than asked for`);
    }
    for (const p of job.parts) {
      const from = Math.max(at, p.begin);
      const to = Math.min(cEnd, p.end);
      if (from >= to) continue;
      let done = 0;
      while (done < to - from)
        done += (await fh.write(c, from - at + done, to - from - done, p.out + (from - p.begin) + done)).bytesWritten;
    }
    at = cEnd;
  }
  if (at !== job.end)
    throw new Error(
      `GET ${url} (bytes ${job.begin}-${job.end - 1}): got ${at - job.begin} of ${job.end - job.begin} bytes`,
    );
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const s = new Set(b);
  return a.length === s.size && a.every((x) => s.has(x));
}

/**
 * The tensors the router reads (router-service/src/checkpoint-model.ts): per MoE layer the gate, DeepSeek-V3's
 * e_score_correction_bias, the shared expert's gate/up/down and Qwen2-MoE's shared_expert_gate, where the spec has
 * them.
 */
export function routerTensorNames(spec: ModelSpec): string[] {
  // the loader's own list (with the shapes it reads them with), so that what is fetched is what it reads
  return moeLayers(spec).flatMap((l) => routerTensorShapes(spec, l).map((t) => t.name));
}
