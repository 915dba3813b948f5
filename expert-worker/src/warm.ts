// Warm-up: load the experts a worker serves into its caches before it takes traffic. Without it the first batches
// pay for every expert's checkpoint read and upload: on the H200, a full-size DeepSeek-V3 worker (514 experts, 45 GB)
// answered its first batch after 18.6 s (bench/results/logs/h200-e2e-dsv3-2318-cold.log). The worker reports ready
// (grpc.health "switchyard.v1.ExpertWorker", /readyz, the local launcher's `warmed` message) only once this is done.

import type { ExpertBackend, PreparedExpert } from "./backend/types.js";
import type { ExpertId, ResidencyCache } from "./cache.js";

export interface WarmResult {
  /** Experts loaded into the host tier by this warm-up. */
  loaded: number;
  /** Served experts left cold: more than the cache holds (the first ones in layer, expert order are warmed). */
  leftCold: number;
  /** Bytes read from the checkpoint. */
  bytes: number;
  seconds: number;
  /** Experts on the device tier afterwards (CUDA; undefined for host-only backends). */
  deviceResident?: number;
  /** Uploads to the device tier that failed (absent: none), and the first one's error: those experts load on first use. */
  deviceFailed?: { count: number; first: string };
  /** Set when close() stopped it early. */
  stopped?: boolean;
}

export interface WarmOptions {
  /** What to warm (warmList orders it). */
  ids: Iterable<ExpertId>;
  cache: ResidencyCache;
  backend: ExpertBackend;
  /** Loads in flight at once (a checkpoint read overlaps the previous expert's packing and upload). Default 4. */
  concurrency?: number;
  /** Whether the worker still serves an expert (a new plan may take some away meanwhile); default: all of `ids`. */
  serves?: (id: ExpertId) => boolean;
  /** Polled between loads: true stops the warm-up (the worker is closing). */
  stopped?: () => boolean;
  /** Called with the count loaded so far and the count to load: once before the first load, then after each. */
  progress?: (loaded: number, target: number) => void;
}

/**
 * The experts to warm: `ids` not yet resident, in layer then expert order, as many as the cache has room for. Only
 * those are kept, not every id: a worker serving all experts passes them generated (layers × experts of them, which
 * may be far more than its cache holds). Ids that come in order, as those do, cost one comparison each.
 */
export function warmList(
  ids: Iterable<ExpertId>,
  cache: Pick<ResidencyCache, "has" | "capacity" | "size">,
): { take: ExpertId[]; leftCold: number } {
  // Free slots only: warming must never push out an expert that traffic already brought in.
  const room = Math.max(0, cache.capacity - cache.size);
  const order = (a: ExpertId, b: ExpertId) => a.layer - b.layer || a.expert - b.expert;
  const take: ExpertId[] = []; // sorted, at most `room` long
  let cold = 0;
  for (const id of ids) {
    if (cache.has(id.layer, id.expert)) continue;
    cold++;
    if (take.length === room && (room === 0 || order(id, take[room - 1]) >= 0)) continue;
    let [lo, hi] = [0, take.length];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (order(take[mid], id) <= 0) lo = mid + 1;
      else hi = mid;
    }
    take.splice(lo, 0, id);
    if (take.length > room) take.pop();
  }
  return { take, leftCold: cold - take.length };
}

/**
 * Loads `ids` (see warmList) into the host cache, and moves each to the device tier into free slots as it arrives.
 * A failed load rejects with the expert named: a checkpoint the worker cannot read is not one it can serve.
 */
export async function warmExperts(o: WarmOptions): Promise<WarmResult> {
  const t0 = performance.now();
  const { take, leftCold } = warmList(o.ids, o.cache);
  const bytes0 = o.cache.transferBytes;
  const uploads: Promise<readonly unknown[]>[] = [];
  let next = 0;
  let loaded = 0;
  let dropped = 0; // no longer served: neither loaded nor cold
  let stopped = false;
  let failed = false;
  let inFlight = 0;
  o.progress?.(0, take.length);
  const lane = async () => {
    for (;;) {
      if (failed) return;
      if (o.stopped?.()) {
        stopped = true;
        return;
      }
      const id = take[next];
      if (id === undefined) return;
      if (o.serves?.(id) === false) {
        next++;
        dropped++;
        continue;
      }
      // Traffic may have taken slots since warmList counted them: never evict for the warm-up.
      if (o.cache.size + inFlight >= o.cache.capacity && !o.cache.has(id.layer, id.expert)) return;
      next++;
      inFlight++;
      try {
        // fill, not prefetch: loads that traffic started meanwhile may take the free slot while this one reads
        if (!(await o.cache.fill(id))) return;
      } catch (err) {
        if (o.stopped?.()) {
          // The worker closed its checkpoint under this read: a stop, not a broken checkpoint.
          stopped = true;
          return;
        }
        failed = true; // the other lanes stop at their next expert
        throw new Error(`warm-up: layer ${id.layer} expert ${id.expert}: ${(err as Error).message}`);
      } finally {
        inFlight--;
      }
      loaded++;
      o.progress?.(loaded, take.length);
      const p: PreparedExpert | undefined = o.cache.peek(id.layer, id.expert);
      // evict: false fills free device slots only (the host tier may hold more than the device does).
      if (p && o.backend.prefetch) uploads.push(o.backend.prefetch([p], { evict: false }));
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, lane));
  const uploadErrors = (await Promise.all(uploads)).flatMap((x) => x ?? []);
  const firstUploadError = uploadErrors[0];
  return {
    loaded,
    leftCold: leftCold + (take.length - loaded - dropped),
    bytes: o.cache.transferBytes - bytes0,
    seconds: (performance.now() - t0) / 1000,
    deviceResident: o.backend.deviceCacheStats?.()?.resident,
    ...(uploadErrors.length > 0
      ? {
          deviceFailed: {
            count: uploadErrors.length,
            first: firstUploadError instanceof Error ? firstUploadError.message : String(firstUploadError),
          },
        }
      : {}),
    ...(stopped ? { stopped } : {}),
  };
}

/** One log line for a warm-up. */
export function warmSummary(r: WarmResult): string {
  const gb = (r.bytes / 1e9).toFixed(2);
  const device = r.deviceResident === undefined ? "" : `; ${r.deviceResident} on the device`;
  const cold = r.leftCold > 0 ? `; ${r.leftCold} left cold (more than the cache holds)` : "";
  const failed = r.deviceFailed
    ? `; ${r.deviceFailed.count} failed to upload to the device (${r.deviceFailed.first}): they load on first use`
    : "";
  return `warm-up ${r.stopped ? "stopped" : "done"}: ${r.loaded} experts (${gb} GB) loaded in ${r.seconds.toFixed(1)} s${device}${cold}${failed}`;
}
