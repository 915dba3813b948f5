// Seeded pseudo-random numbers for tests, benchmarks and synthetic traffic: a failing case or a figure can be
// replayed from its printed seed. Not for anything that needs statistical quality or secrecy.

/** mulberry32: a tiny 32-bit generator; returns a function giving uniform numbers in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
