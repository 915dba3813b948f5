// Histogram and counter children for the router's per-request path, exposed through a prom-client Registry in
// prom-client's own format. prom-client's label-bound children still re-validate and re-hash their label object
// and look buckets up by number-to-string keys on every call: six histograms and three counters per request cost
// ~7 µs of the router's ~110 µs at one token (CPU profile, bench:router). Here a child is plain fields: observe()
// is a bucket search and three adds, inc() one add; the exposition is built at scrape time.

import type { Registry } from "prom-client";

type Labels = Record<string, string>;

interface MetricValue {
  value: number;
  labels: Labels;
  metricName?: string;
}

interface Exported {
  name: string;
  help: string;
  type: "histogram" | "counter";
  values: MetricValue[];
  aggregator: "sum";
}

export class HotHistogramChild {
  /** Per bucket (non-cumulative), the last slot is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    private readonly bounds: readonly number[],
    readonly labels: Labels,
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    if (!Number.isFinite(v)) return; // a NaN duration would poison _sum forever; drop it
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

abstract class HotMetric<C> {
  private readonly children = new Map<string, C>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    registry: Registry,
  ) {
    // A Registry takes any object with name + get()/getForPromString() (prom-client's own custom-metric contract).
    registry.registerMetric(this as unknown as Parameters<Registry["registerMetric"]>[0]);
  }

  protected abstract make(labels: Labels): C;

  private key(l: Labels): string {
    return this.labelNames.map((n) => l[n]).join("\u0000");
  }

  /** The child for these labels (cache it: this builds a key). */
  labels(l: Labels): C {
    for (const n of this.labelNames) if (typeof l[n] !== "string") throw new Error(`${this.name}: label ${n} missing`);
    const key = this.key(l);
    let c = this.children.get(key);
    if (!c) {
      c = this.make({ ...l });
      this.children.set(key, c);
    }
    return c;
  }

  protected all(): C[] {
    return [...this.children.values()];
  }

  /** Drops the series of these labels (a removed pool's); a child handed out before keeps counting, unexported. */
  remove(l: Labels): void {
    this.children.delete(this.key(l));
  }

  reset(): void {
    this.children.clear();
  }

  abstract getForPromString(): Promise<Exported>;

  get(): Promise<Exported> {
    return this.getForPromString();
  }
}

export class HotHistogram extends HotMetric<HotHistogramChild> {
  readonly type = "histogram";
  readonly aggregator = "sum";

  constructor(
    o: { name: string; help: string; labelNames: readonly string[]; buckets: readonly number[] },
    registry: Registry,
  ) {
    super(o.name, o.help, o.labelNames, registry);
    this.buckets = [...o.buckets].sort((a, b) => a - b);
  }

  private readonly buckets: number[];

  protected make(labels: Labels): HotHistogramChild {
    return new HotHistogramChild(this.buckets, labels);
  }

  async getForPromString(): Promise<Exported> {
    const values: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const c of this.all()) {
      let acc = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        acc += c.counts[i];
        values.push({ value: acc, labels: { le: String(this.buckets[i]), ...c.labels }, metricName: bucket });
      }
      values.push({ value: c.count, labels: { le: "+Inf", ...c.labels }, metricName: bucket });
      values.push({ value: c.sum, labels: c.labels, metricName: `${this.name}_sum` });
      values.push({ value: c.count, labels: c.labels, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: "histogram", values, aggregator: "sum" };
  }
}

export class HotCounterChild {
  value = 0;
  constructor(readonly labels: Labels) {}

  inc(n = 1): void {
    if (n < 0 || !Number.isFinite(n)) throw new Error(`counter increment must be finite and >= 0, got ${n}`);
    this.value += n;
  }
}

export class HotCounter extends HotMetric<HotCounterChild> {
  readonly type = "counter";
  readonly aggregator = "sum";

  constructor(o: { name: string; help: string; labelNames: readonly string[] }, registry: Registry) {
    super(o.name, o.help, o.labelNames, registry);
  }

  protected make(labels: Labels): HotCounterChild {
    return new HotCounterChild(labels);
  }

  /** prom-client's Counter.inc(labels, n) form, for callers off the hot path. */
  inc(labels: Labels, n = 1): void {
    this.labels(labels).inc(n);
  }

  async getForPromString(): Promise<Exported> {
    const values = this.all().map((c) => ({ value: c.value, labels: c.labels }));
    return { name: this.name, help: this.help, type: "counter", values, aggregator: "sum" };
  }
}
