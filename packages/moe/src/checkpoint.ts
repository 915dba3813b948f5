// Checkpoint reader: config.json + safetensors (single file or sharded via model.safetensors.index.json) with
// Hugging Face key names. Only the tensors asked for are read, by positioned reads; shard headers are read on first
// use, so a worker serving a few experts touches only the shards that hold them.

import { access, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { bytesToFloat32, DType, failedPrecondition, invalidArgument, notFound } from "@switchyard/protocol";
import { SafetensorsFile, type TensorInfo } from "./safetensors.js";
import {
  correctionBiasKey,
  type ExpertKeys,
  expertKeys,
  gateKey,
  isMoeLayer,
  type ModelSpec,
  sharedExpertGateKey,
  sharedExpertKeys,
  sharedSlices,
  specFromHfConfig,
  type WeightDType,
} from "./spec.js";

/** A 2-D weight as stored: raw little-endian bytes, row-major [rows, cols] (HF Linear: [out, in]). */
export interface WeightMatrix {
  dtype: WeightDType;
  rows: number;
  cols: number;
  data: Uint8Array;
}

/** One SwiGLU expert: gate/up [intermediate, hidden], down [hidden, intermediate]. */
export interface ExpertWeights {
  gate: WeightMatrix;
  up: WeightMatrix;
  down: WeightMatrix;
}

export const SAFETENSORS_DTYPE: Record<WeightDType, "BF16" | "F16" | "F32"> = {
  bfloat16: "BF16",
  float16: "F16",
  float32: "F32",
};
const FROM_SAFETENSORS: Record<string, WeightDType> = { BF16: "bfloat16", F16: "float16", F32: "float32" };
const PROTO_DTYPE: Record<WeightDType, DType> = {
  bfloat16: DType.BFLOAT16,
  float16: DType.FLOAT16,
  float32: DType.FLOAT32,
};

export function protoDType(dtype: WeightDType): DType {
  return PROTO_DTYPE[dtype];
}

export function weightBytesPerElement(dtype: WeightDType): number {
  return dtype === "float32" ? 4 : 2;
}

/** Widen a weight to fp32 (a view for aligned fp32 data, else a new array). */
export function toFloat32(m: WeightMatrix): Float32Array {
  return bytesToFloat32(m.data, PROTO_DTYPE[m.dtype]);
}

export interface Checkpoint {
  readonly dir: string;
  readonly spec: ModelSpec;
  readExpert(layer: number, expert: number): Promise<ExpertWeights>;
  /** Router weight [experts, hidden]. */
  readGate(layer: number): Promise<WeightMatrix>;
  /** Shared expert MLP, or undefined when the model has none. */
  readSharedExpert(layer: number): Promise<ExpertWeights | undefined>;
  /** DeepSeek-V3 e_score_correction_bias as [1, experts], or undefined for softmax-gated families. */
  readCorrectionBias(layer: number): Promise<WeightMatrix | undefined>;
  /** Qwen2-MoE shared_expert_gate [1, hidden], or undefined. */
  readSharedExpertGate(layer: number): Promise<WeightMatrix | undefined>;
  /** Any tensor by key, with its expected shape checked when given. */
  readTensor(name: string, expectShape?: readonly number[]): Promise<WeightMatrix>;
  /** Which file holds a key (undefined when none). */
  fileOf(name: string): string | undefined;
  /** Bytes read from disk so far (tests check that reads stay partial). */
  readonly bytesRead: number;
  close(): Promise<void>;
}

export const INDEX_FILE = "model.safetensors.index.json";
export const SINGLE_FILE = "model.safetensors";

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound(`${path}: no such file`);
    throw failedPrecondition(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw failedPrecondition(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** weight_map of an index file, validated: every value is a plain file name inside the checkpoint dir. */
export function parseIndex(raw: unknown, file: string): Map<string, string> {
  if (typeof raw !== "object" || raw === null) throw failedPrecondition(`${file}: must be a JSON object`);
  const wm = (raw as { weight_map?: unknown }).weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm))
    throw failedPrecondition(`${file}: weight_map must be an object`);
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof v !== "string" || v.length === 0 || v !== basename(v) || v === "." || v === "..")
      throw failedPrecondition(
        `${file}: weight_map[${JSON.stringify(k)}] must be a file name in the checkpoint directory, got ${JSON.stringify(v)}`,
      );
    out.set(k, v);
  }
  return out;
}

/** Open a checkpoint directory. Reads config.json and (if sharded) the index; no tensor data yet. */
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  const configPath = join(dir, "config.json");
  const spec = specFromHfConfig(await readJson(configPath), configPath);
  const indexPath = join(dir, INDEX_FILE);
  let weightMap: Map<string, string> | undefined;
  if (await exists(indexPath)) {
    weightMap = parseIndex(await readJson(indexPath), indexPath);
  } else if (!(await exists(join(dir, SINGLE_FILE)))) {
    throw notFound(`${dir}: neither ${SINGLE_FILE} nor ${INDEX_FILE} found`);
  }
  return new DirCheckpoint(dir, spec, weightMap);
}

class DirCheckpoint implements Checkpoint {
  private readonly files = new Map<string, Promise<SafetensorsFile>>();
  private bytes = 0;
  private closed = false;

  constructor(
    readonly dir: string,
    readonly spec: ModelSpec,
    private readonly weightMap: Map<string, string> | undefined,
  ) {}

  get bytesRead(): number {
    return this.bytes;
  }

  fileOf(name: string): string | undefined {
    return this.weightMap ? this.weightMap.get(name) : SINGLE_FILE;
  }

  private file(name: string): Promise<SafetensorsFile> {
    let f = this.files.get(name);
    if (!f) {
      f = SafetensorsFile.open(join(this.dir, name));
      // A failed open is not cached: the next call retries (the file may appear, e.g. a volume still syncing).
      f.catch(() => this.files.delete(name));
      this.files.set(name, f);
    }
    return f;
  }

  async readTensor(name: string, expectShape?: readonly number[]): Promise<WeightMatrix> {
    if (this.closed) throw failedPrecondition(`${this.dir}: checkpoint is closed`);
    const fileName = this.fileOf(name);
    if (!fileName) throw notFound(`${join(this.dir, INDEX_FILE)}: tensor ${name} is not in weight_map`);
    const file = await this.file(fileName);
    const info = file.info(name);
    if (!info) throw notFound(`${file.path}: tensor ${name} not found`);
    checkInfo(file.path, info, expectShape);
    const { data } = await file.read(name);
    this.bytes += data.byteLength;
    const shape = info.shape;
    const rows = shape.length === 2 ? shape[0] : 1;
    const cols = shape.length === 2 ? shape[1] : shape.length === 1 ? shape[0] : 1;
    return { dtype: FROM_SAFETENSORS[info.dtype], rows, cols, data };
  }

  private checkLayer(layer: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.spec.layers)
      throw invalidArgument("layer", `must be an integer in [0, ${this.spec.layers}), got ${layer}`);
    if (!isMoeLayer(this.spec, layer)) throw invalidArgument("layer", `layer ${layer} is a dense layer (no experts)`);
  }

  private async readMlp(keys: ExpertKeys, inter: number): Promise<ExpertWeights> {
    const d = this.spec.hiddenSize;
    const [gate, up, down] = await Promise.all([
      this.readTensor(keys.gate, [inter, d]),
      this.readTensor(keys.up, [inter, d]),
      this.readTensor(keys.down, [d, inter]),
    ]);
    return { gate, up, down };
  }

  readExpert(layer: number, expert: number): Promise<ExpertWeights> {
    this.checkLayer(layer);
    if (!Number.isInteger(expert) || expert < 0 || expert >= this.spec.experts)
      return Promise.reject(
        invalidArgument("expert", `must be an integer in [0, ${this.spec.experts}), got ${expert}`),
      );
    return this.readMlp(expertKeys(this.spec, layer, expert), this.spec.intermediateSize);
  }

  readGate(layer: number): Promise<WeightMatrix> {
    this.checkLayer(layer);
    return this.readTensor(gateKey(this.spec, layer), [this.spec.experts, this.spec.hiddenSize]);
  }

  async readSharedExpert(layer: number): Promise<ExpertWeights | undefined> {
    this.checkLayer(layer);
    const keys = sharedExpertKeys(this.spec, layer);
    return keys ? this.readMlp(keys, this.spec.sharedIntermediateSize) : undefined;
  }

  async readCorrectionBias(layer: number): Promise<WeightMatrix | undefined> {
    this.checkLayer(layer);
    const key = correctionBiasKey(this.spec, layer);
    if (!key) return undefined;
    const bias = await this.readTensor(key, [this.spec.experts]);
    // A NaN or infinite bias silently changes which experts are chosen (sigmoidGroupTopK refuses it too); say
    // here which file holds it, rather than failing later on a request.
    const values = toFloat32(bias);
    for (let e = 0; e < values.length; e++) {
      if (!Number.isFinite(values[e]))
        throw failedPrecondition(
          `${join(this.dir, this.fileOf(key) ?? SINGLE_FILE)}: tensor ${key}[${e}]: must be finite, got ${values[e]}`,
        );
    }
    return bias;
  }

  async readSharedExpertGate(layer: number): Promise<WeightMatrix | undefined> {
    this.checkLayer(layer);
    const key = sharedExpertGateKey(this.spec, layer);
    return key ? this.readTensor(key, [1, this.spec.hiddenSize]) : undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    const files = [...this.files.values()];
    this.files.clear();
    await Promise.all(files.map((f) => f.then((x) => x.close()).catch(() => undefined)));
  }
}

function checkInfo(file: string, info: TensorInfo, expectShape?: readonly number[]): void {
  if (!(info.dtype in FROM_SAFETENSORS))
    throw failedPrecondition(`${file}: tensor ${info.name}: dtype ${info.dtype} is not supported (BF16, F16 or F32)`);
  if (info.shape.length > 2)
    throw failedPrecondition(`${file}: tensor ${info.name}: expected rank <= 2, got [${info.shape.join(", ")}]`);
  if (expectShape && (info.shape.length !== expectShape.length || info.shape.some((d, i) => d !== expectShape[i])))
    throw failedPrecondition(
      `${file}: tensor ${info.name}: expected shape [${expectShape.join(", ")}], got [${info.shape.join(", ")}]`,
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The shared expert as routed-expert-shaped slices (see sharedSlices in spec.ts)

/** Slice j of a shared MLP of width m·f: gate/up rows [j·f, (j+1)·f) and down columns [j·f, (j+1)·f). */
export function sliceSharedExpert(w: ExpertWeights, j: number, f: number): ExpertWeights {
  const inter = w.gate.rows;
  if (!Number.isInteger(f) || f < 1 || inter % f !== 0)
    throw invalidArgument("sliceWidth", `must divide the shared expert's width ${inter}, got ${f}`);
  if (!Number.isInteger(j) || j < 0 || j >= inter / f)
    throw invalidArgument("slice", `must be an integer in [0, ${inter / f}), got ${j}`);
  const rowsOf = (m: WeightMatrix): WeightMatrix => {
    const rowBytes = m.cols * weightBytesPerElement(m.dtype);
    return { ...m, rows: f, data: m.data.slice(j * f * rowBytes, (j + 1) * f * rowBytes) };
  };
  const el = weightBytesPerElement(w.down.dtype);
  const d = w.down.rows;
  const down = new Uint8Array(d * f * el);
  for (let r = 0; r < d; r++) {
    const from = (r * inter + j * f) * el;
    down.set(w.down.data.subarray(from, from + f * el), r * f * el);
  }
  return { gate: rowsOf(w.gate), up: rowsOf(w.up), down: { dtype: w.down.dtype, rows: d, cols: f, data: down } };
}

/**
 * Reads expert ids the way a worker serves them: [0, experts) are routed experts, [experts, experts + m) the
 * shared expert's slices. Slices asked for while the layer's shared expert is being read share that one read (a
 * worker loads its experts concurrently at start); nothing is kept after it.
 */
export function expertReader(ckpt: Checkpoint): (layer: number, expert: number) => Promise<ExpertWeights> {
  const { spec } = ckpt;
  const m = sharedSlices(spec);
  const pending = new Map<number, Promise<ExpertWeights>>();
  return (layer, expert) => {
    if (expert < spec.experts || m === 0) return ckpt.readExpert(layer, expert);
    if (!Number.isInteger(expert) || expert >= spec.experts + m)
      return Promise.reject(
        invalidArgument(
          "expert",
          `must be an integer in [0, ${spec.experts + m}) (${spec.experts} experts and ${m} shared slices), got ${expert}`,
        ),
      );
    let whole = pending.get(layer);
    if (!whole) {
      whole = ckpt.readSharedExpert(layer).then((w) => {
        if (!w) throw failedPrecondition(`${ckpt.dir}: layer ${layer} has no shared expert`);
        return w;
      });
      pending.set(layer, whole);
      const forget = () => pending.delete(layer);
      whole.then(forget, forget);
    }
    return whole.then((w) => sliceSharedExpert(w, expert - spec.experts, spec.intermediateSize));
  };
}

// ---------------------------------------------------------------------------------------------------------------
// fp32 views of a layer (router, reference computation, tests)

/** fp32 weights of one SwiGLU MLP: gate/up [intermediate, hidden], down [hidden, intermediate]. */
export interface ExpertFFNWeights {
  hidden: number;
  intermediate: number;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

export function expertToFloat32(w: ExpertWeights): ExpertFFNWeights {
  return {
    hidden: w.gate.cols,
    intermediate: w.gate.rows,
    gate: toFloat32(w.gate),
    up: toFloat32(w.up),
    down: toFloat32(w.down),
  };
}

/** Everything one MoE layer needs, in fp32. */
export interface MoeLayerWeights {
  /** Router [experts, hidden]. */
  gate: Float32Array;
  experts: ExpertFFNWeights[];
  shared?: ExpertFFNWeights;
  /** Qwen2-MoE shared expert gate [hidden]. */
  sharedGate?: Float32Array;
  /** DeepSeek-V3 [experts]. */
  correctionBias?: Float32Array;
}

/** Read a whole MoE layer as fp32 (all experts: for references and tests, not for workers). */
export async function readLayerFloat32(ckpt: Checkpoint, layer: number): Promise<MoeLayerWeights> {
  const experts: ExpertFFNWeights[] = [];
  for (let e = 0; e < ckpt.spec.experts; e++) experts.push(expertToFloat32(await ckpt.readExpert(layer, e)));
  const out: MoeLayerWeights = { gate: toFloat32(await ckpt.readGate(layer)), experts };
  const shared = await ckpt.readSharedExpert(layer);
  if (shared) out.shared = expertToFloat32(shared);
  const sg = await ckpt.readSharedExpertGate(layer);
  if (sg) out.sharedGate = toFloat32(sg);
  const bias = await ckpt.readCorrectionBias(layer);
  if (bias) out.correctionBias = toFloat32(bias);
  return out;
}
