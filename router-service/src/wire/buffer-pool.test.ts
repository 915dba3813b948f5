import { describe, expect, it } from "vitest";
import { BufferPool, keepPerClass, POOL_MIN_BYTES } from "./buffer-pool.js";

describe("BufferPool", () => {
  it("reuses a returned large buffer for the same size class, never small or foreign ones", () => {
    const pool = new BufferPool();
    const a = pool.take(POOL_MIN_BYTES + 10);
    expect(a.length).toBe(POOL_MIN_BYTES + 10);
    a[0] = 42;
    pool.give(a.subarray(3, 9)); // a view of a pooled buffer returns the whole allocation
    expect(pool.held).toBe(1);
    const b = pool.take(POOL_MIN_BYTES + 1000); // same power-of-two class
    expect(b.buffer).toBe(a.buffer);
    expect(b.length).toBe(POOL_MIN_BYTES + 1000);
    expect(pool.held).toBe(0);
    const c = pool.take(POOL_MIN_BYTES + 10); // pool empty: a fresh one
    expect(c.buffer).not.toBe(a.buffer);
    pool.give(Buffer.allocUnsafe(100)); // small: not pooled
    pool.give(Buffer.alloc(POOL_MIN_BYTES * 3)); // not a power-of-two backing: not ours
    pool.give(Buffer.allocUnsafeSlow(POOL_MIN_BYTES * 4)); // power-of-two size but not allocated here: not ours
    pool.give(Buffer.allocUnsafe(16)); // Node's shared 8 KiB slab: never adopted
    expect(pool.held).toBe(0);
    expect(pool.take(100).length).toBe(100);
    // Size classes at and just past a power of two.
    const p8 = pool.take(8192);
    expect(p8.buffer.byteLength).toBe(8192);
    pool.give(p8);
    expect(pool.take(8192).buffer).toBe(p8.buffer);
    expect(pool.take(8193).buffer.byteLength).toBe(16384);
  });

  it("keeps as many free buffers of a class as 32 MiB of it holds, between 8 and 256", () => {
    expect(keepPerClass(8 << 10)).toBe(256);
    expect(keepPerClass(1 << 20)).toBe(32);
    expect(keepPerClass(16 << 20)).toBe(8);
    const pool = new BufferPool();
    const out = Array.from({ length: 300 }, () => pool.take(5000));
    for (const b of out) pool.give(b);
    expect(pool.held).toBe(256);
  });
});
