// Checkpoint reader: config.json + safetensors (single file or sharded via model.safetensors.index.json) with
// Hugging Face key names. Only the tensors asked for are read, by positioned reads; shard headers are read on first
// use, so a worker serving a few experts touches only the shards that hold them.

import { access } from "node:fs/promises";
import { basename, join } from "node:path";
import { bytesToFloat32, DType, failedPrecondition, invalidArgument, notFound } from "@switchyard/protocol";
import { MAX_HEADER_BYTES, openRegularFile, readExactly, SafetensorsFile, type TensorInfo } from "./safetensors.js";
import {
  correctionBiasKey,
  type ExpertKeys,
  expertKeys,
  gateKey,
  hfConfigKey,
  isMoeLayer,
  type ModelSpec,
  moeLayers,
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
  /** A tensor's dtype and shape as its file's header gives them (no data read), or undefined when it is absent. */
  tensorInfo(name: string): Promise<{ dtype: string; shape: number[]; file: string } | undefined>;
  /** Bytes read from disk so far (tests check that reads stay partial). */
  readonly bytesRead: number;
  close(): Promise<void>;
}

export const INDEX_FILE = "model.safetensors.index.json";
export const SINGLE_FILE = "model.safetensors";

/** Largest config.json read or downloaded: a real one is a few KB; anything near this is not a config. */
export const MAX_CONFIG_BYTES = 16 * 2 ** 20;
/** Largest index read (DeepSeek-V3's is 9 MB), as a safetensors header. */
export const MAX_INDEX_BYTES = MAX_HEADER_BYTES;

/**
 * A JSON file of the checkpoint, at most `maxBytes` long: its size is checked before it is read, so a wrong file
 * (a shard under the name, a FIFO, a directory) fails naming it instead of filling memory or blocking.
 */
export async function readCheckpointJson(path: string, maxBytes: number): Promise<unknown> {
  const { fh, size } = await openRegularFile(path);
  let bytes: Uint8Array;
  try {
    if (size > maxBytes)
      throw failedPrecondition(`${path}: ${size} bytes, more than the ${maxBytes} a ${basename(path)} may have`);
    bytes = await readExactly(fh, 0, size, path, "the file");
  } finally {
    await fh.close();
  }
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
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
  const spec = specFromHfConfig(await readCheckpointJson(configPath, MAX_CONFIG_BYTES), configPath);
  const indexPath = join(dir, INDEX_FILE);
  let weightMap: Map<string, string> | undefined;
  if (await exists(indexPath)) {
    weightMap = parseIndex(await readCheckpointJson(indexPath, MAX_INDEX_BYTES), indexPath);
  } else if (!(await exists(join(dir, SINGLE_FILE)))) {
    throw notFound(`${dir}: neither ${SINGLE_FILE} nor ${INDEX_FILE} found`);
  }
  return new DirCheckpoint(dir, spec, weightMap);
}

/**
 * Checks cheaply (file headers only, no tensor data) that config.json describes the checkpoint's tensors: the first
 * MoE layer's gate is [experts, hidden_size]; with `experts` (a worker's checkpoint: the router's share holds no
 * routed experts) that layer's last expert, experts - 1, is there with gate/up [intermediate, hidden] and down
 * [hidden, intermediate]; and the last MoE layer's gate is there. A worker sizes its lists by the config (layers ×
 * experts) before it reads an expert: a wrong count must fail here, naming the config.json key and the tensor, not
 * in an out-of-memory or at the first request.
 */
export async function checkConfigAgainstTensors(ckpt: Checkpoint, o: { experts: boolean }): Promise<void> {
  const { spec } = ckpt;
  const config = join(ckpt.dir, "config.json");
  const key = (f: keyof ModelSpec) => hfConfigKey(spec.family, f);
  const where = (name: string) => {
    const f = ckpt.fileOf(name);
    return f === undefined ? `the weight_map of ${join(ckpt.dir, INDEX_FILE)}` : join(ckpt.dir, f);
  };
  const need = async (name: string, why: string) => {
    const info = await ckpt.tensorInfo(name);
    if (!info) throw failedPrecondition(`${config}: ${why}, but tensor ${name} is not in ${where(name)}`);
    return info;
  };
  const shaped = (info: { shape: number[]; file: string }, name: string, want: number[], why: string) => {
    if (info.shape.length !== want.length || info.shape.some((d, i) => d !== want[i]))
      throw failedPrecondition(
        `${config}: ${why} say tensor ${name} is [${want.join(", ")}], but ${info.file} has it as [${info.shape.join(", ")}]`,
      );
  };
  const layers = moeLayers(spec);
  const [first, last] = [layers[0], layers[layers.length - 1]];
  const [e, d, f] = [spec.experts, spec.hiddenSize, spec.intermediateSize];
  const dense = key("firstDenseLayers");
  const firstWhy = `layer ${first} is the first MoE layer${dense === "firstDenseLayers" ? "" : ` (${dense})`}`;
  const gate = gateKey(spec, first);
  shaped(await need(gate, firstWhy), gate, [e, d], `${key("experts")} (${e}) and hidden_size (${d})`);
  if (o.experts) {
    const k = expertKeys(spec, first, e - 1);
    const dims = `${key("intermediateSize")} (${f}) and hidden_size (${d})`;
    for (const [name, want] of [
      [k.gate, [f, d]],
      [k.up, [f, d]],
      [k.down, [d, f]],
    ] as const)
      shaped(await need(name, `${key("experts")} is ${e}`), name, [...want], dims);
  }
  if (last !== first)
    await need(gateKey(spec, last), `${key("layers")} is ${spec.layers}: layer ${last} is an MoE layer`);
}

/** A router tensor the loader reads with a fixed shape, and the config.json keys that give it (for messages). */
export interface ExpectedTensor {
  name: string;
  shape: number[];
  keys: string;
}

/**
 * One MoE layer's router tensors with the shapes the loader reads them with (readGate, readCorrectionBias,
 * readSharedExpert, readSharedExpertGate): the gate [experts, hidden], DeepSeek-V3's correction bias [experts], the
 * shared expert's gate/up [shared, hidden] and down [hidden, shared], Qwen2-MoE's shared_expert_gate [1, hidden].
 */
export function routerTensorShapes(spec: ModelSpec, layer: number): ExpectedTensor[] {
  const key = (f: keyof ModelSpec) => hfConfigKey(spec.family, f);
  const [e, d, s] = [spec.experts, spec.hiddenSize, spec.sharedIntermediateSize];
  const out: ExpectedTensor[] = [{ name: gateKey(spec, layer), shape: [e, d], keys: `${key("experts")}, hidden_size` }];
  const bias = correctionBiasKey(spec, layer);
  if (bias) out.push({ name: bias, shape: [e], keys: key("experts") });
  const sk = sharedExpertKeys(spec, layer);
  if (sk) {
    const width =
      spec.family === "deepseek-v3"
        ? `${key("intermediateSize")} × ${key("sharedIntermediateSize")}`
        : key("sharedIntermediateSize");
    out.push(
      { name: sk.gate, shape: [s, d], keys: `${width}, hidden_size` },
      { name: sk.up, shape: [s, d], keys: `${width}, hidden_size` },
      { name: sk.down, shape: [d, s], keys: `hidden_size, ${width}` },
    );
  }
  const sg = sharedExpertGateKey(spec, layer);
  if (sg) out.push({ name: sg, shape: [1, d], keys: "hidden_size" });
  return out;
}

/**
 * Why a tensor's header entry is not what the loader reads for `want` (a dtype it cannot read, another shape), or
 * undefined when it is. `config` names the config.json the expectation comes from.
 */
export function tensorMismatch(
  info: { dtype: string; shape: readonly number[] },
  want: ExpectedTensor,
  config: string,
): string | undefined {
  if (!(info.dtype in FROM_SAFETENSORS))
    return `tensor ${want.name}: dtype ${info.dtype} is not supported (BF16, F16 or F32)`;
  if (info.shape.length !== want.shape.length || info.shape.some((d, i) => d !== want.shape[i]))
    return (
      `tensor ${want.name}: shape [${info.shape.join(", ")}], but ${config} (${want.keys}) says ` +
      `[${want.shape.join(", ")}]`
    );
  return undefined;
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

  async tensorInfo(name: string): Promise<{ dtype: string; shape: number[]; file: string } | undefined> {
    if (this.closed) throw failedPrecondition(`${this.dir}: checkpoint is closed`);
    const fileName = this.fileOf(name);
    if (!fileName) return undefined;
    const file = await this.file(fileName);
    const info = file.info(name);
    return info && { dtype: info.dtype, shape: info.shape, file: file.path };
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
    const key = gateKey(this.spec, layer);
    return this.readTensor(key, [this.spec.experts, this.spec.hiddenSize]).then((gate) => {
      // A NaN or infinite weight makes every token's logits non-finite, and each request would then fail as if its
      // own logits were bad: say here which weight it is.
      const at = firstNonFinite(gate);
      if (at >= 0) {
        const [r, c] = [Math.floor(at / gate.cols), at % gate.cols];
        throw failedPrecondition(
          `${join(this.dir, this.fileOf(key) ?? SINGLE_FILE)}: tensor ${key}[${r}, ${c}] (expert ${r}, column ${c}): ` +
            `must be finite, got ${elementOf(gate, at)}`,
        );
      }
      return gate;
    });
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

/**
 * Index of the first NaN or infinity in a weight, or -1. By the exponent bits of the raw little-endian values: a
 * DeepSeek-V3 gate is 1.8 M values a layer, which need no fp32 copy for this.
 */
export function firstNonFinite(m: WeightMatrix): number {
  const d = m.data;
  if (m.dtype === "float32") {
    // exponent: bits 23-30 (byte 3 low 7 bits, byte 2 top bit)
    for (let i = 0; i + 3 < d.length; i += 4) if ((d[i + 3] & 0x7f) === 0x7f && d[i + 2] & 0x80) return i / 4;
  } else if (m.dtype === "bfloat16") {
    for (let i = 0; i + 1 < d.length; i += 2) if ((d[i + 1] & 0x7f) === 0x7f && d[i] & 0x80) return i / 2;
  } else {
    // float16: exponent bits 10-14 (byte 1, bits 2-6)
    for (let i = 0; i + 1 < d.length; i += 2) if ((d[i + 1] & 0x7c) === 0x7c) return i / 2;
  }
  return -1;
}

function elementOf(m: WeightMatrix, i: number): number {
  const size = weightBytesPerElement(m.dtype);
  return toFloat32({ ...m, rows: 1, cols: 1, data: m.data.slice(i * size, (i + 1) * size) })[0];
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
