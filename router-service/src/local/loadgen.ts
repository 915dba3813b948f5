// Synthetic engine traffic for the local mode. Hidden states are token embeddings plus a little noise, and the
// token ids follow a Zipf law with locality (a sequence often repeats one of its recent tokens): OpenMoE found
// routing to be decided mostly by token id, so this gives skewed, sticky expert popularity through the real
// gate, as a served model would. Pure and seeded: same seed, same traffic.

import { mulberry32 } from "@switchyard/moe";

export { mulberry32 };

/** Samples 0..n-1 with P(i) ∝ 1/(i+1)^s (inverse CDF over a precomputed table). */
export class Zipf {
  private readonly cdf: Float64Array;
  constructor(
    readonly n: number,
    readonly s: number,
  ) {
    this.cdf = new Float64Array(n);
    let acc = 0;
    for (let i = 0; i < n; i++) {
      acc += 1 / (i + 1) ** s;
      this.cdf[i] = acc;
    }
    for (let i = 0; i < n; i++) this.cdf[i] /= acc;
  }
  sample(u: number): number {
    let lo = 0;
    let hi = this.n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

export interface TrafficOptions {
  vocab: number;
  hidden: number;
  zipfS: number;
  /** Probability that the next token repeats one of the sequence's last `window` tokens. */
  locality: number;
  window: number;
  /** Noise added to the embedding, relative to its scale. */
  noise: number;
  seed: number;
}

export const DEFAULT_TRAFFIC: Omit<TrafficOptions, "hidden" | "seed"> = {
  vocab: 2048,
  zipfS: 1.05,
  locality: 0.4,
  window: 8,
  noise: 0.1,
};

/** Token embeddings and per-sequence token streams. */
export class Traffic {
  private readonly emb: Float32Array;
  private readonly zipf: Zipf;
  /** Zipf rank -> token id, so popular tokens are spread over the vocabulary. */
  private readonly perm: Int32Array;

  constructor(readonly o: TrafficOptions) {
    const r = mulberry32(o.seed ^ 0x5eed);
    this.emb = new Float32Array(o.vocab * o.hidden);
    for (let i = 0; i < this.emb.length; i++) this.emb[i] = (r() * 2 - 1) * 1.7; // ~unit variance
    this.zipf = new Zipf(o.vocab, o.zipfS);
    this.perm = Int32Array.from({ length: o.vocab }, (_, i) => i);
    for (let i = o.vocab - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [this.perm[i], this.perm[j]] = [this.perm[j], this.perm[i]];
    }
  }

  sequence(id: number): Sequence {
    return new Sequence(this, mulberry32(this.o.seed * 7919 + id * 104729 + 1));
  }

  nextToken(rand: () => number, recent: number[]): number {
    if (recent.length > 0 && rand() < this.o.locality) return recent[Math.floor(rand() * recent.length)];
    return this.perm[this.zipf.sample(rand())];
  }

  /** Writes token `tok`'s hidden state (embedding + noise) at row `row` of out. */
  embed(tok: number, rand: () => number, out: Float32Array, row: number): void {
    const d = this.o.hidden;
    const base = tok * d;
    for (let j = 0; j < d; j++) out[row * d + j] = this.emb[base + j] + this.o.noise * (rand() * 2 - 1);
  }
}

export class Sequence {
  private readonly recent: number[] = [];
  constructor(
    private readonly t: Traffic,
    private readonly rand: () => number,
  ) {}

  /** The hidden states [n, d] of the next n tokens. */
  next(n: number): { tokens: number[]; hidden: Float32Array } {
    const d = this.t.o.hidden;
    const hidden = new Float32Array(n * d);
    const tokens: number[] = [];
    for (let i = 0; i < n; i++) {
      const tok = this.t.nextToken(this.rand, this.recent);
      tokens.push(tok);
      this.recent.push(tok);
      if (this.recent.length > this.t.o.window) this.recent.shift();
      this.t.embed(tok, this.rand, hidden, i);
    }
    return { tokens, hidden };
  }
}

/** p-quantile of unsorted samples (nearest rank). */
export function quantile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const s = Float64Array.from(samples).sort();
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
}

/** Parses Prometheus text exposition into name{labels} -> value (enough for our own counters). */
export function parsePromText(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[2]) for (const lm of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}
