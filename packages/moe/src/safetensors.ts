// safetensors format: 8-byte little-endian header length N, N bytes of JSON header
// ({"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}), then the data
// section; offsets are relative to the start of the data section. We read the header and then only the byte
// ranges of the tensors asked for (positioned reads), never the whole file.

import { constants, type Stats } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { failedPrecondition, notFound, type SwitchyardError } from "@switchyard/protocol";

/** dtypes we can read and write. Others in a header are reported when a tensor of that dtype is requested. */
export type SafetensorsDType = "BF16" | "F16" | "F32";

const DTYPE_SIZE: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file [begin, end). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  /** Absolute offset of the data section (8 + header length). */
  dataStart: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** Largest header we accept (the format caps it at 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

function bad(file: string, msg: string): SwitchyardError {
  return failedPrecondition(`${file}: ${msg}`);
}

/**
 * Parse and validate a header. `json` is the header's bytes, `fileSize` the whole file's size (so a truncated file
 * is caught here, before any read). Pure.
 */
export function parseSafetensorsHeader(json: Uint8Array, file: string, fileSize: number): SafetensorsHeader {
  const dataStart = 8 + json.byteLength;
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (e) {
    throw bad(file, `bad safetensors header: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw bad(file, "bad safetensors header: not a JSON object");
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  const dataSize = fileSize - dataStart;
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof v === "object" && v !== null && !Array.isArray(v)) metadata = v as Record<string, string>;
      else throw bad(file, "bad safetensors header: __metadata__ must be an object");
      continue;
    }
    const where = `tensor ${name}`;
    if (typeof v !== "object" || v === null)
      throw bad(file, `bad safetensors header: ${where}: entry must be an object`);
    const { dtype, shape, data_offsets } = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_SIZE, dtype))
      throw bad(file, `bad safetensors header: ${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0))
      throw bad(file, `bad safetensors header: ${where}: shape must be an array of non-negative integers`);
    if (
      !Array.isArray(data_offsets) ||
      data_offsets.length !== 2 ||
      !data_offsets.every((d) => Number.isSafeInteger(d) && d >= 0) ||
      data_offsets[1] < data_offsets[0]
    )
      throw bad(file, `bad safetensors header: ${where}: data_offsets must be [begin, end] with 0 <= begin <= end`);
    const [b, e] = data_offsets as [number, number];
    const want = (shape as number[]).reduce((a, d) => a * d, 1) * DTYPE_SIZE[dtype];
    if (e - b !== want)
      throw bad(
        file,
        `bad safetensors header: ${where}: data_offsets span ${e - b} bytes, shape [${shape.join(", ")}] ${dtype} needs ${want}`,
      );
    if (e > dataSize)
      throw bad(
        file,
        `truncated: tensor ${name} ends at data byte ${e} but the file has only ${Math.max(0, dataSize)} data bytes`,
      );
    tensors.set(name, { name, dtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e });
  }
  // Overlapping ranges would hand one tensor another's bytes: plausible-looking, silently wrong weights.
  const byBegin = [...tensors.values()].filter((t) => t.end > t.begin).sort((x, y) => x.begin - y.begin);
  for (let i = 1; i < byBegin.length; i++) {
    const [p, t] = [byBegin[i - 1], byBegin[i]];
    if (t.begin < p.end)
      throw bad(
        file,
        `bad safetensors header: tensor ${t.name}: data_offsets [${t.begin - dataStart}, ${t.end - dataStart}] overlap tensor ${p.name}'s [${p.begin - dataStart}, ${p.end - dataStart}]`,
      );
  }
  return { file, dataStart, tensors, metadata };
}

/** An errno error (EIO, EISDIR, ...) as a SwitchyardError naming the file and what was being done. */
function fileError(file: string, doing: string, e: unknown): SwitchyardError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return notFound(`${file}: no such file`);
  return failedPrecondition(`${file}: cannot ${doing} (${(e as Error).message})`);
}

/**
 * Open a file for reading, refusing anything but a regular file. O_NONBLOCK: a FIFO under a checkpoint's file name
 * would otherwise block open(2) until a writer comes, in a libuv thread that not even process.exit() ends; opened
 * this way it returns at once, and fstat tells what it is (a directory would only fail at its first read, EISDIR,
 * without the file's name). The flag changes nothing for reads of a regular file.
 */
export async function openRegularFile(path: string): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw fileError(path, "open", e);
  }
  let st: Stats;
  try {
    st = await fh.stat();
  } catch (e) {
    await fh.close().catch(() => {});
    throw fileError(path, "stat", e);
  }
  if (!st.isFile()) {
    await fh.close().catch(() => {});
    throw failedPrecondition(`${path}: not a regular file`);
  }
  return { fh, size: st.size };
}

/** Read exactly `length` bytes at `position`, or fail naming the file (short read = truncated file). */
export async function readExactly(
  fh: FileHandle,
  position: number,
  length: number,
  file: string,
  what: string,
): Promise<Uint8Array> {
  // Not zero-filled: every byte is read over, or the read throws and `out` is dropped. Zero-filling cost a worker's
  // warm-up 9.6 s of its JavaScript thread at DeepSeek-V3's 45 GB (bench/results/logs/h200-e2e-dsv3-2328-prof/
  // w0-top.txt). Never pooled either (allocUnsafeSlow): callers view `out.buffer` from offset 0. A plain Uint8Array
  // over it, not the Buffer: Buffer's slice() is a view where Uint8Array's copies (sliceSharedExpert relies on that).
  const out = new Uint8Array(Buffer.allocUnsafeSlow(length).buffer, 0, length);
  let done = 0;
  while (done < length) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await fh.read(out, done, length - done, position + done));
    } catch (e) {
      throw fileError(file, `read ${what} (bytes [${position}, ${position + length}))`, e);
    }
    if (bytesRead === 0)
      throw bad(
        file,
        `truncated: ${what} needs bytes [${position}, ${position + length}), file ends at ${position + done}`,
      );
    done += bytesRead;
  }
  return out;
}

/** Read and validate the header of an open file. */
export async function readSafetensorsHeader(
  fh: FileHandle,
  file: string,
  knownSize?: number,
): Promise<SafetensorsHeader> {
  let size = knownSize;
  if (size === undefined) {
    try {
      size = (await fh.stat()).size;
    } catch (e) {
      throw fileError(file, "stat", e);
    }
  }
  if (size < 8) throw bad(file, `truncated: ${size} bytes, a safetensors file starts with an 8-byte header length`);
  const lenBytes = await readExactly(fh, 0, 8, file, "header length");
  const len = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
  if (len === 0 || len > MAX_HEADER_BYTES)
    throw bad(file, `bad safetensors header: header length ${len} out of range (1..${MAX_HEADER_BYTES})`);
  if (8 + len > size) throw bad(file, `truncated: header length ${len} exceeds the file (${size} bytes)`);
  const json = await readExactly(fh, 8, len, file, "header");
  return parseSafetensorsHeader(json, file, size);
}

/** One open safetensors file: header parsed once, tensors read by positioned reads. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly header: SafetensorsHeader,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    const { fh, size } = await openRegularFile(path);
    try {
      return new SafetensorsFile(path, fh, await readSafetensorsHeader(fh, path, size));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  info(name: string): TensorInfo | undefined {
    return this.header.tensors.get(name);
  }

  /** Raw little-endian bytes of one tensor. */
  async read(name: string): Promise<{ info: TensorInfo; data: Uint8Array }> {
    const info = this.header.tensors.get(name);
    if (!info) throw notFound(`${this.path}: tensor ${name} not found`);
    const data = await readExactly(this.fh, info.begin, info.end - info.begin, this.path, `tensor ${name}`);
    return { info, data };
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Raw LE bytes, or a producer called once at write time (keeps memory at one tensor). */
  data: Uint8Array | (() => Uint8Array);
}

export function dtypeBytes(dtype: string): number {
  const s = Object.hasOwn(DTYPE_SIZE, dtype) ? DTYPE_SIZE[dtype] : undefined;
  if (s === undefined) throw failedPrecondition(`unknown safetensors dtype ${dtype}`);
  return s;
}

/** Header bytes for tensors laid out in the given order, padded with spaces to a multiple of 8 (as the format asks). */
export function buildSafetensorsHeader(
  tensors: readonly Pick<TensorToWrite, "name" | "dtype" | "shape">[],
  metadata?: Record<string, string>,
): { header: Uint8Array; dataBytes: number } {
  const obj: Record<string, unknown> = {};
  if (metadata) obj["__metadata__"] = metadata;
  let off = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, d) => a * d, 1) * dtypeBytes(t.dtype);
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(obj);
  const pad = (8 - ((Buffer.byteLength(json) + 8) % 8)) % 8;
  json += " ".repeat(pad);
  const body = Buffer.from(json, "utf8");
  const header = new Uint8Array(8 + body.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(body.byteLength), true);
  header.set(body, 8);
  return { header, dataBytes: off };
}

/** Write a safetensors file, one tensor at a time. Returns the total data bytes. */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<number> {
  const { header, dataBytes } = buildSafetensorsHeader(tensors, metadata);
  const fh = await open(path, "w");
  try {
    await fh.write(header, 0, header.byteLength, 0);
    let pos = header.byteLength;
    for (const t of tensors) {
      const data = typeof t.data === "function" ? t.data() : t.data;
      const want = t.shape.reduce((a, d) => a * d, 1) * dtypeBytes(t.dtype);
      if (data.byteLength !== want)
        throw failedPrecondition(`${path}: tensor ${t.name}: ${data.byteLength} bytes, expected ${want}`);
      let done = 0;
      while (done < data.byteLength) {
        const { bytesWritten } = await fh.write(data, done, data.byteLength - done, pos + done);
        done += bytesWritten;
      }
      pos += data.byteLength;
    }
  } finally {
    await fh.close();
  }
  return dataBytes;
}
