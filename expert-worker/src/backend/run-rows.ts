// How many rows one CUDA run may hold. A run's device buffers (the addon's IoSet) grow with its rows, while the
// expert slots take what the device had at start; a batch with enough rows (a deduplicated batch's token_rows can
// ask for far more rows than its bytes) would otherwise fail out of memory at run time, after it was queued and its
// experts uploaded. So the backend sizes a row limit once, when its context has taken the slots, from the memory
// left, and runs a larger batch in parts (cuda.ts run). Pure: cuda.ts reads the free memory and logs the result.

/** The addon's own bound on a run's rows (addon_cuda.cc Run: IntField("rows", 0, 1 << 24)). */
export const MAX_ADDON_ROWS = 1 << 24;

const MIB = 2 ** 20;
const GIB = 2 ** 30;

/**
 * Device bytes of one run's buffers as a linear bound, `fixed + rows * perRow`, for experts of hidden size `d` and
 * intermediate size `f` on a context with `slots` expert slots. The terms are the addon's allocations in
 * RunWorker::Execute (addon_cuda.cc) and sy_moe's workspace (sy_moe.cu make_layout, which the addon sizes with
 * num_experts = slots, top_k = 1, T = rows), taken at their largest: a deduplicated batch summed on the device whose
 * every row has a distinct token of its own. (A deduplicated batch with more distinct tokens than rows is the
 * backend's to handle: cuda.ts expands it on the host.) bf16 on the device whatever the tokens' dtype.
 */
export function runDeviceBytes(d: number, f: number, slots: number): { perRow: number; fixed: number } {
  const perRow =
    // d_stage, the run's one copy up: the token in bf16 (2d), its row's slot id and kernel weight (4 + 4), and
    // for a deduplicated batch its token index, its token's offset into the row order, that order and the sum's
    // weight (4 x 4)
    2 * d +
    24 +
    // d_in: the deduplicated batch's tokens gathered into rows (bf16)
    2 * d +
    // d_out: the experts' rows (bf16)
    2 * d +
    // d_sum: the per-token sums (fp32)
    4 * d +
    // workspace: ids, weights, ranks (3 x 4); the tile list, a 16-byte tile per 16 rows (max_m_tiles; its tile per
    // active expert is counted per slot below) (1); row_token, row_w, assign_row (3 x 4); x_perm (bf16 d), h (bf16
    // f), y (bf16 d), out_acc (fp32 d)
    12 +
    1 +
    12 +
    2 * d +
    2 * f +
    2 * d +
    4 * d;
  const fixed =
    // d_stage: the per-token offsets' closing entry
    4 +
    // workspace: counts and offsets per slot (2 x 4), num_tiles (16), the tile list's tile per active expert (at
    // most one per slot) and its E more entries (2 x 16 per slot) and its rounding up (16), one CUtensorMap (128
    // bytes) x 4 per slot (emaps)
    8 * slots +
    16 +
    32 * slots +
    16 +
    4 * 128 * slots +
    // each of the workspace's 15 parts starts on a 256-byte boundary
    15 * 256 +
    // each of the set's 5 device buffers (d_stage, d_in, d_out, d_sum, workspace) may be rounded up by cudaMalloc
    // to its 2 MiB granularity
    5 * 2 * MIB;
  return { perRow, fixed };
}

/**
 * Memory the limit leaves unused of what was free: 10% of it, at least 1 GiB. For what the estimate does not see:
 * the kernels' modules (loaded at their first launch) and local memory, the CUDA runtime's own growth, pinned
 * staging's mappings, another process on the same GPU allocating after this one looked.
 */
export function runHeadroom(freeBytes: number): number {
  return Math.max(GIB, 0.1 * freeBytes);
}

/**
 * SWITCHYARD_GPU_MAX_ROWS: rows one GPU run holds at most, in place of the bound from free memory (as
 * SWITCHYARD_GPU_CACHE_SLOTS is for the slots); unset: undefined. Names the variable on bad input.
 */
export function gpuMaxRows(env: NodeJS.ProcessEnv): number | undefined {
  const v = env.SWITCHYARD_GPU_MAX_ROWS;
  if (v === undefined || v === "") return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`SWITCHYARD_GPU_MAX_ROWS: expected an integer >= 1, got "${v}"`);
  return n;
}

export interface RowLimitInput {
  /** SWITCHYARD_GPU_MAX_ROWS (gpuMaxRows). */
  override?: number;
  d: number;
  f: number;
  slots: number;
  /** Sets of run buffers the context holds (runsInFlight): each may hold a run at the limit at once. */
  runsInFlight: number;
  /** Device memory free once the context has taken its slots (cudaMemGetInfo); undefined: not known. */
  freeBytes?: number;
  /** The worker's --max-rows (rows a batch may hold): no run holds more. */
  maxRows?: number;
}

export interface RunRowLimit {
  /** Rows one run holds at most: the least of the bounds below and MAX_ADDON_ROWS. */
  rows: number;
  /** Where the device's own bound came from. */
  from: "free memory" | "SWITCHYARD_GPU_MAX_ROWS" | "unknown";
  /** The device's own bound (before --max-rows); undefined when neither free memory nor the override says one. */
  deviceRows?: number;
  /** The estimate (runDeviceBytes) the free-memory bound assumed. */
  bytesPerRow: number;
  fixedBytes: number;
  freeBytes?: number;
  headroomBytes?: number;
  runsInFlight: number;
  maxRows?: number;
}

/**
 * The row limit: SWITCHYARD_GPU_MAX_ROWS when set (an operator who measured otherwise, as SWITCHYARD_GPU_CACHE_SLOTS
 * is for the slots), else what fits in the free memory less the headroom, divided among the sets of run buffers (a
 * set keeps what it grew to for the next run, so every set may hold a run at the limit at once); never more than
 * --max-rows, never fewer than 1 row.
 */
export function runRowLimit(i: RowLimitInput): RunRowLimit {
  const { perRow, fixed } = runDeviceBytes(i.d, i.f, i.slots);
  const base = { bytesPerRow: perRow, fixedBytes: fixed, runsInFlight: i.runsInFlight, maxRows: i.maxRows };
  let device: Pick<RunRowLimit, "from" | "deviceRows" | "freeBytes" | "headroomBytes">;
  if (i.override !== undefined) device = { from: "SWITCHYARD_GPU_MAX_ROWS", deviceRows: i.override };
  else if (i.freeBytes !== undefined) {
    const headroom = runHeadroom(i.freeBytes);
    const perSet = (i.freeBytes - headroom) / i.runsInFlight - fixed;
    device = {
      from: "free memory",
      deviceRows: Math.max(1, Math.floor(perSet / perRow)),
      freeBytes: i.freeBytes,
      headroomBytes: headroom,
    };
  } else device = { from: "unknown" };
  const rows = Math.min(MAX_ADDON_ROWS, device.deviceRows ?? MAX_ADDON_ROWS, i.maxRows ?? MAX_ADDON_ROWS);
  return { ...base, ...device, rows };
}

/** The start-up log line of a device's limit. */
export function describeRowLimit(l: RunRowLimit, device: number): string {
  const gib = (b: number) => `${(b / GIB).toFixed(1)} GiB`;
  const why =
    l.from === "free memory"
      ? `${gib(l.freeBytes as number)} free after the expert slots, less ${gib(l.headroomBytes as number)} headroom, ` +
        `over ${l.runsInFlight} run${l.runsInFlight > 1 ? "s" : ""} in flight at ${l.bytesPerRow} bytes per row + ` +
        `${(l.fixedBytes / MIB).toFixed(1)} MiB each: ${l.deviceRows} rows`
      : l.from === "SWITCHYARD_GPU_MAX_ROWS"
        ? `SWITCHYARD_GPU_MAX_ROWS=${l.deviceRows} (free memory not consulted; ${l.bytesPerRow} bytes per row)`
        : `free device memory unknown (an addon without memInfo); ${l.bytesPerRow} bytes per row`;
  const cap =
    l.maxRows !== undefined && l.maxRows < (l.deviceRows ?? MAX_ADDON_ROWS) ? `; --max-rows ${l.maxRows}` : "";
  return `GPU runs on CUDA device ${device}: at most ${l.rows} rows each (${why}${cap}); a batch with more runs in parts`;
}
