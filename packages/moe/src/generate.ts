// Seeded random checkpoint generator: config.json + safetensors (optionally sharded with
// model.safetensors.index.json) in the Hugging Face layout of any supported family, at any size.
//
// Values are uniform with the std of a fan-in init (1/sqrt(fan_in)), so with O(1) hidden states the gate/up
// projections, the SwiGLU activation and the expert outputs all stay O(1), and router logits are O(1) (routing is
// neither uniform nor one-hot). Every tensor has its own PRNG stream seeded from (seed, key name): the same seed
// gives the same tensors whatever the sharding, and a test can regenerate any one tensor without the others.
// Only MoE tensors are written (router, experts, shared experts, correction bias, shared-expert gate): attention,
// norms, embeddings and the dense MLPs of DeepSeek's first_k_dense_replace layers are not needed to serve experts.

import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { f32ToBf16, f32ToF16, invalidArgument } from "@switchyard/protocol";
import { INDEX_FILE, SAFETENSORS_DTYPE, SINGLE_FILE } from "./checkpoint.js";
import { dtypeBytes, type TensorToWrite, writeSafetensors } from "./safetensors.js";
import {
  correctionBiasKey,
  defaultSpec,
  expertKeys,
  gateKey,
  hfConfigJson,
  type ModelFamily,
  type ModelSpec,
  moeLayers,
  sharedExpertGateKey,
  sharedExpertKeys,
  type WeightDType,
} from "./spec.js";

export interface GenerateOptions extends Partial<Omit<ModelSpec, "family">> {
  family: ModelFamily;
  dir: string;
  seed?: number;
  /** Number of safetensors files; > 1 writes model-0000i-of-0000n.safetensors + model.safetensors.index.json. */
  shards?: number;
  /** Half-width of the uniform DeepSeek-V3 e_score_correction_bias (default 0.05). */
  biasScale?: number;
  /**
   * Shards written at once, each by a worker thread (default 1: in this thread). The bytes are the same either way
   * (every tensor has its own stream); threads need the compiled generate-thread.js beside this module and fall back
   * to one at a time without it (tests that run the TypeScript sources).
   */
  threads?: number;
}

export interface GeneratedCheckpoint {
  dir: string;
  spec: ModelSpec;
  files: string[];
  /** Bytes of tensor data written. */
  totalBytes: number;
}

/**
 * Seeds are 32-bit: the stream takes `seed >>> 0`, so 2^32 would silently give seed 0's tensors and 1.7 seed 1's
 * (a checkpoint cached under its seed would then be another seed's).
 */
function checkSeed(seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32)
    throw invalidArgument("seed", `must be an integer in [0, 2^32), got ${seed}`);
}

function checkBiasScale(biasScale: number): void {
  if (!Number.isFinite(biasScale) || biasScale < 0)
    throw invalidArgument("biasScale", `must be a finite number >= 0, got ${biasScale}`);
}

/** 32-bit FNV-1a of a string. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function splitmix32(state: number): () => number {
  let s = state >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/**
 * A stream of uniform values in [-a, a) for (seed, name). xorshift128: fast, and plenty for weights (not for
 * cryptography). fill() continues where the last call stopped, so a tensor can be produced in cache-sized chunks.
 */
export class UniformStream {
  private x: number;
  private y: number;
  private z: number;
  private w: number;
  private readonly scale: number;

  constructor(
    seed: number,
    name: string,
    private readonly a: number,
  ) {
    checkSeed(seed);
    const init = splitmix32(fnv1a(name) ^ Math.imul(seed >>> 0, 0x9e3779b1));
    this.x = init() | 1;
    this.y = init();
    this.z = init();
    this.w = init();
    this.scale = (2 * a) / 4294967296;
  }

  fill(out: Float32Array): Float32Array {
    let { x, y, z, w } = this;
    const { scale, a } = this;
    const n = out.length;
    for (let i = 0; i < n; i++) {
      const t = x ^ (x << 11);
      x = y;
      y = z;
      z = w;
      w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
      out[i] = w * scale - a;
    }
    this.x = x;
    this.y = y;
    this.z = z;
    this.w = w;
    return out;
  }
}

/** `n` uniform values in [-a, a) from the stream for (seed, name). */
export function uniformTensor(
  seed: number,
  name: string,
  n: number,
  a: number,
  out: Float32Array = new Float32Array(n),
): Float32Array {
  return new UniformStream(seed, name, a).fill(out.length === n ? out : out.subarray(0, n));
}

/** Uniform half-width for a given std (uniform on [-a, a) has std a/sqrt(3)). */
function halfWidthForStd(std: number): number {
  return std * Math.sqrt(3);
}

const CHUNK = 16384;

/**
 * The bytes of one generated tensor in `dtype`. Half types are produced in L1-sized f32 chunks and narrowed (RNE)
 * straight into the output, so a large tensor is never held in f32.
 */
function generateBytes(seed: number, t: PlannedTensor): Uint8Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const stream = new UniformStream(seed, t.name, t.halfWidth);
  if (t.dtype === "float32") {
    const v = stream.fill(new Float32Array(n));
    return new Uint8Array(v.buffer);
  }
  const out = new Uint16Array(n);
  const scratch = new Float32Array(CHUNK);
  const narrow = t.dtype === "bfloat16" ? f32ToBf16 : f32ToF16;
  for (let i = 0; i < n; i += CHUNK) {
    const m = Math.min(CHUNK, n - i);
    const v = stream.fill(m === CHUNK ? scratch : scratch.subarray(0, m));
    narrow(v, out.subarray(i, i + m));
  }
  return new Uint8Array(out.buffer);
}

interface PlannedTensor {
  name: string;
  shape: number[];
  /** std of the values, or a fixed half-width for the bias */
  halfWidth: number;
  dtype: WeightDType;
}

/** The tensors of a checkpoint, in file order (layer by layer). */
export function plannedTensors(spec: ModelSpec, biasScale = 0.05): PlannedTensor[] {
  checkBiasScale(biasScale);
  const d = spec.hiddenSize;
  const f = spec.intermediateSize;
  const out: PlannedTensor[] = [];
  const mat = (name: string, rows: number, cols: number) =>
    out.push({ name, shape: [rows, cols], halfWidth: halfWidthForStd(1 / Math.sqrt(cols)), dtype: spec.dtype });
  for (const l of moeLayers(spec)) {
    mat(gateKey(spec, l), spec.experts, d);
    const bias = correctionBiasKey(spec, l);
    // HF DeepSeek-V3 checkpoints keep e_score_correction_bias in fp32.
    if (bias) out.push({ name: bias, shape: [spec.experts], halfWidth: biasScale, dtype: "float32" });
    for (let e = 0; e < spec.experts; e++) {
      const k = expertKeys(spec, l, e);
      mat(k.gate, f, d);
      mat(k.up, f, d);
      mat(k.down, d, f);
    }
    const sk = sharedExpertKeys(spec, l);
    if (sk) {
      const fs = spec.sharedIntermediateSize;
      mat(sk.gate, fs, d);
      mat(sk.up, fs, d);
      mat(sk.down, d, fs);
    }
    const sg = sharedExpertGateKey(spec, l);
    if (sg) mat(sg, 1, d);
  }
  return out;
}

/** Regenerate one tensor's fp32 values exactly as the generator wrote them (before rounding to the dtype). */
export function generatedValues(spec: ModelSpec, seed: number, name: string, biasScale = 0.05): Float32Array {
  const t = plannedTensors(spec, biasScale).find((p) => p.name === name);
  if (!t) throw new Error(`generatedValues: ${name} is not a tensor of this spec`);
  return uniformTensor(
    seed,
    name,
    t.shape.reduce((a, b) => a * b, 1),
    t.halfWidth,
  );
}

/** One safetensors file of a generated checkpoint: the tensors named, from (spec, seed, biasScale). */
export interface ShardJob {
  path: string;
  spec: ModelSpec;
  seed: number;
  biasScale: number;
  names: string[];
}

export async function writeShard(job: ShardJob): Promise<void> {
  const wanted = new Set(job.names);
  const toWrite: TensorToWrite[] = plannedTensors(job.spec, job.biasScale)
    .filter((t) => wanted.has(t.name))
    .map((t) => ({
      name: t.name,
      dtype: SAFETENSORS_DTYPE[t.dtype],
      shape: t.shape,
      data: () => generateBytes(job.seed, t),
    }));
  await writeSafetensors(job.path, toWrite, { format: "pt" });
}

/**
 * Up to `threads` shards at a time, one worker thread each; rejects with the first shard that fails, after stopping
 * the others (no thread keeps writing into the directory once the call has failed).
 */
async function writeShardsInThreads(jobs: ShardJob[], threads: number, script: URL): Promise<void> {
  let next = 0;
  let failed = false;
  const live = new Set<Worker>();
  const runOne = (job: ShardJob) =>
    new Promise<void>((resolve, reject) => {
      // no inherited flags: a test runner's --conditions would point the thread's imports at TypeScript sources
      const w = new Worker(script, { workerData: job, execArgv: [] });
      live.add(w);
      w.once("message", () => resolve());
      w.once("error", reject);
      w.once("exit", (code) => {
        live.delete(w);
        if (code === 0) resolve();
        else reject(new Error(`${job.path}: generator thread exited with code ${code}`));
      });
    });
  const lane = async () => {
    while (next < jobs.length && !failed) await runOne(jobs[next++]);
  };
  try {
    await Promise.all(Array.from({ length: Math.min(threads, jobs.length) }, lane));
  } catch (e) {
    failed = true;
    await Promise.all([...live].map((w) => w.terminate()));
    throw e;
  }
}

function shardName(i: number, n: number): string {
  const p = (x: number) => String(x).padStart(5, "0");
  return `model-${p(i + 1)}-of-${p(n)}.safetensors`;
}

/** Write a random checkpoint. Sizes default to defaultSpec(family). */
export async function generateCheckpoint(opts: GenerateOptions): Promise<GeneratedCheckpoint> {
  const { family, dir, seed = 0, shards = 1, biasScale = 0.05, threads = 1, ...overrides } = opts;
  const spec = defaultSpec(family, overrides);
  if (!Number.isInteger(shards) || shards < 1) throw new Error(`shards: must be a positive integer, got ${shards}`);
  // before anything is written
  checkSeed(seed);
  checkBiasScale(biasScale);
  await mkdir(dir, { recursive: true });
  // config.json goes last: its presence says the checkpoint is whole (the local mode reuses a directory that has
  // one), so an interrupted run leaves none. A checkpoint generated here before goes first: its index would win
  // over a new single file, and serve the old weights without a word.
  await rm(join(dir, "config.json"), { force: true });
  for (const f of await readdir(dir))
    if (f === INDEX_FILE || f === SINGLE_FILE || /^model-\d+-of-\d+\.safetensors$/.test(f))
      await rm(join(dir, f), { force: true });

  const planned = plannedTensors(spec, biasScale);
  const bytesOf = (t: PlannedTensor) => t.shape.reduce((a, b) => a * b, 1) * dtypeBytes(SAFETENSORS_DTYPE[t.dtype]);
  const total = planned.reduce((a, t) => a + bytesOf(t), 0);
  const nShards = Math.min(shards, planned.length);
  // Contiguous split into shards of roughly equal bytes.
  const groups: PlannedTensor[][] = [];
  let cur: PlannedTensor[] = [];
  let acc = 0;
  for (const t of planned) {
    cur.push(t);
    acc += bytesOf(t);
    const remainingShards = nShards - groups.length - 1;
    if (remainingShards > 0 && acc >= (total * (groups.length + 1)) / nShards) {
      groups.push(cur);
      cur = [];
    }
  }
  if (cur.length > 0 || groups.length === 0) groups.push(cur);

  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  const jobs: ShardJob[] = [];
  for (let i = 0; i < groups.length; i++) {
    const name = groups.length === 1 && shards === 1 ? SINGLE_FILE : shardName(i, groups.length);
    files.push(name);
    for (const t of groups[i]) weightMap[t.name] = name;
    jobs.push({ path: join(dir, name), spec, seed, biasScale, names: groups[i].map((t) => t.name) });
  }
  const script = new URL("./generate-thread.js", import.meta.url);
  if (threads > 1 && jobs.length > 1 && existsSync(fileURLToPath(script)))
    await writeShardsInThreads(jobs, threads, script);
  else for (const job of jobs) await writeShard(job);
  if (files.length > 1 || shards > 1) {
    await writeFile(
      join(dir, INDEX_FILE),
      `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`,
    );
  }
  await writeFile(join(dir, "config.json.tmp"), hfConfigJson(spec));
  await rename(join(dir, "config.json.tmp"), join(dir, "config.json"));
  return { dir, spec, files, totalBytes: total };
}

/** `<dir>.tmp-<pid>-<random>`: where generateCheckpointAtomic writes `dir` first; the pid tells a stale one. */
export function checkpointTempDir(dir: string, pid: number = process.pid): string {
  return `${dir.replace(/\/+$/, "")}.tmp-${pid}-${randomBytes(4).toString("hex")}`;
}

const TEMP_DIR = /\.tmp-(\d+)-[0-9a-f]+$/;

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code;

/**
 * generateCheckpoint into `tmp`, a sibling of `opts.dir`, then renamed to `opts.dir` in one step: two runs that
 * generate the same checkpoint at once each write their own directory, and a reader sees no checkpoint or a whole
 * one, never another's shards half-written (writing in place, two runs deleted and rewrote each other's files).
 * If `opts.dir` appeared meanwhile (the other run was first), it stays and ours is dropped: `published` false. A
 * directory there without config.json (a generator that wrote in place, cut short) is moved aside and removed.
 */
export async function generateCheckpointAtomic(
  opts: GenerateOptions,
  tmp: string = checkpointTempDir(opts.dir),
): Promise<GeneratedCheckpoint & { published: boolean }> {
  const dir = opts.dir.replace(/\/+$/, "");
  await mkdir(dirname(dir), { recursive: true });
  let out: GeneratedCheckpoint;
  try {
    out = await generateCheckpoint({ ...opts, dir: tmp });
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  for (let attempt = 0; ; attempt++) {
    try {
      await rename(tmp, dir); // replaces an empty directory too
      return { ...out, dir, published: true };
    } catch (e) {
      const whole = existsSync(join(dir, "config.json"));
      if ((errno(e) !== "ENOTEMPTY" && errno(e) !== "EEXIST") || whole || attempt >= 2) {
        await rm(tmp, { recursive: true, force: true });
        if (whole) return { ...out, dir, published: false };
        throw e;
      }
      // a partial checkpoint: aside under a temp name of ours (one rename, so no other run sees it half removed)
      const aside = checkpointTempDir(dir);
      await rename(dir, aside).catch((err: unknown) => {
        if (errno(err) !== "ENOENT") throw err;
      });
      await rm(aside, { recursive: true, force: true });
    }
  }
}

/** Whether a process of this id runs (EPERM: it does, as another user's). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errno(e) === "EPERM";
  }
}

/**
 * Removes the temp directories of generateCheckpointAtomic under `parent` whose process has gone (a run stopped or
 * killed while generating), so that the disk they hold counts as free again; a live process's are left alone.
 * Returns the removed directories and the bytes their files held.
 */
export async function removeStaleCheckpointTemps(parent: string): Promise<{ removed: string[]; bytes: number }> {
  const removed: string[] = [];
  let bytes = 0;
  const names = await readdir(parent).catch((e: unknown) => {
    if (errno(e) === "ENOENT") return [] as string[];
    throw e;
  });
  for (const name of names) {
    const m = TEMP_DIR.exec(name);
    if (!m || alive(Number(m[1]))) continue;
    const path = join(parent, name);
    // a checkpoint directory is flat (config.json, shards, an index): its files' sizes are its bytes
    for (const f of await readdir(path).catch(() => [] as string[]))
      bytes += await stat(join(path, f)).then(
        (st) => st.size,
        () => 0,
      );
    await rm(path, { recursive: true, force: true });
    removed.push(basename(path));
  }
  return { removed, bytes };
}
