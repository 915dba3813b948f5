import { describe, expect, it } from "vitest";
import { parsePromText, quantile, Traffic, Zipf } from "./loadgen.js";

describe("load generator", () => {
  it("Zipf puts most mass on the head", () => {
    const z = new Zipf(1000, 1.1);
    const counts = new Int32Array(1000);
    let u = 0.5;
    for (let i = 0; i < 20000; i++) {
      u = (u * 9301 + 49297) % 233280;
      counts[z.sample(u / 233280)]++;
    }
    expect(counts[0]).toBeGreaterThan(counts[10] * 5);
    expect(counts.slice(0, 10).reduce((a, b) => a + b, 0)).toBeGreaterThan(20000 * 0.3);
  });

  it("is deterministic per seed and repeats recent tokens", () => {
    const t = new Traffic({ vocab: 500, hidden: 4, zipfS: 1, locality: 0.9, window: 4, noise: 0.1, seed: 3 });
    const a = t.sequence(1).next(50);
    const b = t.sequence(1).next(50);
    expect(a.tokens).toEqual(b.tokens);
    expect(Array.from(a.hidden)).toEqual(Array.from(b.hidden));
    const repeats = a.tokens.filter((tok, i) => a.tokens.slice(Math.max(0, i - 4), i).includes(tok)).length;
    expect(repeats).toBeGreaterThan(25);
  });

  it("quantile and prometheus text parsing", () => {
    expect(quantile([5, 1, 3, 2, 4], 0.5)).toBe(3);
    expect(quantile([5, 1, 3, 2, 4], 0.99)).toBe(5);
    const rows = parsePromText('# HELP x\nx_total{pool="a",worker="w0"} 12\ny 3.5\n');
    expect(rows).toEqual([
      { name: "x_total", labels: { pool: "a", worker: "w0" }, value: 12 },
      { name: "y", labels: {}, value: 3.5 },
    ]);
  });
});
