// Reuse of large outgoing message buffers. Each reply the router encodes is megabytes at large T; allocating a fresh
// one per request makes V8 count that much more external memory, and external-memory growth is what triggers its
// full garbage collections (a third of the router's CPU at 2 MiB messages before this pool). A buffer comes back
// only when its write has completed (grpc-js's server has copied it into its frame by then), so it is never
// handed out while still in use; buffers never returned are simply collected.

/**
 * Buffers at least this large are pooled. Node serves allocUnsafe below 4 KiB from its own slab; above that every
 * Buffer is a fresh ArrayBuffer (malloc, V8 bookkeeping, a sweep later), which at one 8 KiB row per request showed
 * as ~10% of the router's CPU in perf.
 */
export const POOL_MIN_BYTES = 4 << 10;
/**
 * Free buffers kept per size class (a class is a power of two): as many as fit in 32 MiB, at least 8 (so 8 of the
 * classes above 4 MiB) and at most 256. A router with 128 decode requests in flight has as many 8 KiB replies out at once; with 8 kept, most replies
 * were fresh allocations (184 ms of a 12 s Qwen3 load in the 02:54 profile).
 */
export function keepPerClass(cls: number): number {
  return Math.max(8, Math.min(256, Math.floor((32 << 20) / cls)));
}

export class BufferPool {
  // Free backings as ArrayBuffers: take() then makes the one Buffer view it returns (a Buffer kept here would need a
  // second view per take, and each Buffer construction is ~0.15 us at one request per message).
  private readonly free = new Map<number, ArrayBufferLike[]>();
  /** Allocations made here: give() takes back only these (never Node's shared slab, whatever its size). */
  private readonly ours = new WeakSet<ArrayBufferLike>();

  /** A buffer of exactly `size` bytes (uninitialised), backed by a pooled power-of-two allocation when large. */
  take(size: number): Buffer {
    if (size < POOL_MIN_BYTES) return Buffer.allocUnsafe(size);
    const cls = classOf(size);
    const backing = this.free.get(cls)?.pop();
    if (backing) return Buffer.from(backing, 0, size);
    const fresh = Buffer.allocUnsafeSlow(cls);
    this.ours.add(fresh.buffer);
    return fresh.subarray(0, size);
  }

  /** Returns a buffer obtained from take() (any view of it) once nothing reads it any more. */
  give(buf: Buffer): void {
    if (!this.ours.has(buf.buffer)) return; // not one of ours
    const cls = buf.buffer.byteLength;
    let list = this.free.get(cls);
    if (!list) {
      list = [];
      this.free.set(cls, list);
    }
    if (list.length < keepPerClass(cls)) list.push(buf.buffer);
  }

  /** Free buffers held (tests). */
  get held(): number {
    let n = 0;
    for (const l of this.free.values()) n += l.length;
    return n;
  }
}

function classOf(size: number): number {
  // Next power of two by bit count (Math.log2 per call showed in profiles); floats past 2^30.
  return size <= 1 << 30 ? 2 ** (32 - Math.clz32(size - 1)) : 2 ** Math.ceil(Math.log2(size));
}

/** The pool for the router's encoded replies (the router is single-threaded). */
export const replyPool = new BufferPool();
/** The pool for encoded ExpertBatches (given back when the worker stream's write completes). */
export const batchPool = new BufferPool();
