// Pure helpers over dashboard JSON and PromQL text, shared by the static dashboard test and the live
// Prometheus test: no I/O here (dashboards.test.ts builds the metric catalog from the code's registries).

export interface PanelQuery {
  dashboard: string;
  panel: string;
  refId: string;
  expr: string;
  instant: boolean;
  legendFormat?: string;
}

type DashboardJson = {
  title: string;
  panels: Array<{
    type: string;
    title: string;
    targets?: Array<{ refId: string; expr: string; instant?: boolean; legendFormat?: string }>;
  }>;
};

/** Every query of every non-row panel. */
export function allQueries(dashboards: DashboardJson[]): PanelQuery[] {
  return dashboards.flatMap((d) =>
    d.panels
      .filter((p) => p.type !== "row")
      .flatMap((p) =>
        (p.targets ?? []).map((t) => ({
          dashboard: d.title,
          panel: p.title,
          refId: t.refId,
          expr: t.expr,
          instant: !!t.instant,
          legendFormat: t.legendFormat,
        })),
      ),
  );
}

/**
 * Replaces Grafana's variables the way Grafana would for "All pools" (any release unless one is given) and a given
 * rate window, so the query can go to Prometheus directly.
 */
export function substituteVariables(
  expr: string,
  opts: { rateInterval?: string; pool?: string; release?: string } = {},
): string {
  const rate = opts.rateInterval ?? "1m";
  return (
    expr
      .replaceAll("$__rate_interval", rate)
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana variable syntax, not a JS template.
      .replaceAll("${__rate_interval}", rate)
      .replaceAll("$__interval", rate)
      .replaceAll("$pool", opts.pool ?? ".*")
      .replaceAll("$release", opts.release ?? ".*")
  );
}

const KEYWORDS = new Set([
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "inf",
  "nan",
]);

/** Metric names a PromQL expression reads (functions, aggregations, labels, keywords and numbers removed). */
export function metricNamesIn(expr: string): Set<string> {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // string literals
    .replace(/\{[^}]*\}/g, "") // label matchers
    .replace(/\[[^\]]*\]/g, "") // range selectors
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ""); // label lists
  const names = new Set<string>();
  for (const m of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\()?)/g)) {
    const [token, call] = [m[0], m[1]];
    if (call || KEYWORDS.has(token.toLowerCase())) continue; // function or aggregation call, or a keyword
    names.add(token);
  }
  return names;
}

// ---------------------------------------------------------------------------------------------------------------
// A PromQL checker: parses a query (the subset dashboards and rules use) and follows which labels each part's
// series carry, against a catalog of the metrics the code exports. It reports what Prometheus would accept but
// answer wrongly or emptily: a metric no process exports, _bucket/_sum/_count on a metric that is no histogram, a
// histogram read without them, rate() of a gauge, a matcher, `by`, `on` or `group_*` label the series do not carry,
// a histogram_quantile whose input lost `le`, and an arithmetic or comparison between vectors of different label
// sets without on/ignoring (it matches nothing).

/** A metric as the code exports it: its type and every label its series carry once scraped. */
export interface MetricInfo {
  type: "counter" | "gauge" | "histogram" | "summary" | "untyped";
  /** Labels of its series (for a histogram: of _sum/_count; _bucket adds `le`). */
  labels: ReadonlySet<string>;
  help?: string;
}

/** Metric name (a histogram's base name) -> what it is. */
export type MetricCatalog = ReadonlyMap<string, MetricInfo>;

export interface SelectorUse {
  /** As written (a histogram's with its suffix). */
  name: string;
  matchers: Array<{ label: string; op: string; value: string }>;
}

export interface AggregationUse {
  op: string;
  /** Labels of the aggregated series; null where unknown (an unknown metric below). */
  input: ReadonlySet<string> | null;
  output: ReadonlySet<string> | null;
}

export interface QueryAnalysis {
  selectors: SelectorUse[];
  aggregations: AggregationUse[];
  /** Labels the result's series may carry; null where unknown, undefined for a scalar result. */
  labels: ReadonlySet<string> | null | undefined;
  /** Empty when the query reads only what the catalog has, the way it has it. */
  problems: string[];
}

const HISTOGRAM_SUFFIXES = ["_bucket", "_sum", "_count"] as const;
const AGGREGATIONS = new Set([
  "sum",
  "avg",
  "min",
  "max",
  "count",
  "group",
  "stddev",
  "stdvar",
  "topk",
  "bottomk",
  "limitk",
  "limit_ratio",
  "quantile",
  "count_values",
]);
/** Aggregations whose first argument is a parameter, not the series. */
const PARAM_AGGREGATIONS = new Set(["topk", "bottomk", "limitk", "limit_ratio", "quantile", "count_values"]);
/** Over a range of a counter (or a histogram's series): what rate() of a gauge would get wrong. */
const COUNTER_FUNCTIONS = new Set(["rate", "irate", "increase", "resets"]);
/** Functions whose result keeps the labels of their (one) series argument. */
const LABEL_KEEPING = new Set([
  "rate",
  "irate",
  "increase",
  "resets",
  "delta",
  "idelta",
  "deriv",
  "changes",
  "predict_linear",
  "avg_over_time",
  "min_over_time",
  "max_over_time",
  "sum_over_time",
  "count_over_time",
  "last_over_time",
  "present_over_time",
  "stddev_over_time",
  "stdvar_over_time",
  "quantile_over_time",
  "abs",
  "ceil",
  "floor",
  "round",
  "exp",
  "ln",
  "log2",
  "log10",
  "sqrt",
  "sgn",
  "clamp",
  "clamp_min",
  "clamp_max",
  "sort",
  "sort_desc",
  "timestamp",
]);
const PRECEDENCE: Record<string, number> = {
  or: 1,
  and: 2,
  unless: 2,
  "==": 3,
  "!=": 3,
  "<=": 3,
  "<": 3,
  ">=": 3,
  ">": 3,
  "+": 4,
  "-": 4,
  "*": 5,
  "/": 5,
  "%": 5,
  atan2: 5,
  "^": 6,
};
const SET_OPS = new Set(["and", "or", "unless"]);

type Tok = { kind: "num" | "dur" | "str" | "ident" | "op" | "punct" | "range" | "eof"; text: string; pos: number };

/** Tokens after strings and ranges, tried in order: a duration before a number, `==` before `=`. */
const TOKEN_RULES: Array<[Tok["kind"], RegExp]> = [
  ["dur", /^(?:\d+(?:ms|[smhdwy]))+(?![\w.])/],
  ["num", /^(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/],
  ["ident", /^[a-zA-Z_:][a-zA-Z0-9_:]*/],
  ["op", /^(?:==|!=|<=|>=|=~|!~|[-+*/%^<>=@])/],
  ["punct", /^[(){},]/],
];

function tokenize(src: string): Tok[] {
  const toks: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const rest = src.slice(i);
    const ws = /^\s+/.exec(rest);
    if (ws) {
      i += ws[0].length;
      continue;
    }
    const c = src[i];
    if (c === "[") {
      // a range or subquery, kept whole: `[5m]`, `[$__rate_interval]`, `[10m:1m]`
      const end = src.indexOf("]", i);
      if (end < 0) throw new Error(`unclosed [ at ${i}`);
      toks.push({ kind: "range", text: src.slice(i + 1, end), pos: i });
      i = end + 1;
      continue;
    }
    if (c === '"' || c === "'" || c === "`") {
      const m = c === "`" ? /^`[^`]*`/.exec(rest) : new RegExp(`^${c}(?:[^${c}\\\\]|\\\\.)*${c}`).exec(rest);
      if (!m) throw new Error(`unclosed string at ${i}`);
      toks.push({ kind: "str", text: m[0].slice(1, -1), pos: i });
      i += m[0].length;
      continue;
    }
    const rule = TOKEN_RULES.map(([kind, re]) => [kind, re.exec(rest)] as const).find(([, m]) => m);
    if (!rule) throw new Error(`unexpected ${JSON.stringify(c)} at ${i}`);
    const text = rule[1]![0];
    toks.push({ kind: rule[0], text, pos: i });
    i += text.length;
  }
  toks.push({ kind: "eof", text: "", pos: src.length });
  return toks;
}

type Labels = Set<string> | null;
type Val =
  | { t: "scalar" }
  | { t: "string"; value: string }
  | { t: "vector" | "matrix"; labels: Labels; counterLike?: boolean; name?: string };

const show = (s: ReadonlySet<string>) => `{${[...s].sort().join(", ")}}`;

/** Parses `expr` and checks it against `catalog` (see MetricCatalog). */
export function analyzeQuery(expr: string, catalog: MetricCatalog): QueryAnalysis {
  const out: QueryAnalysis = { selectors: [], aggregations: [], labels: undefined, problems: [] };
  const problem = (m: string) => {
    if (!out.problems.includes(m)) out.problems.push(m);
  };
  let toks: Tok[];
  try {
    toks = tokenize(expr);
  } catch (e) {
    out.problems.push(`does not parse: ${(e as Error).message}`);
    return out;
  }
  let p = 0;
  const peek = () => toks[p];
  const next = () => toks[p++];
  const fail = (what: string): never => {
    throw new Error(`expected ${what} at ${peek().pos}, got ${JSON.stringify(peek().text) || "the end"}`);
  };
  const eat = (text: string) => {
    if (peek().text !== text || peek().kind === "str") return false;
    p++;
    return true;
  };
  const expect = (text: string) => {
    if (!eat(text)) fail(JSON.stringify(text));
  };
  const isIdent = (text: string) => peek().kind === "ident" && peek().text === text;

  const labelList = (): string[] => {
    expect("(");
    const names: string[] = [];
    while (!eat(")")) {
      if (peek().kind !== "ident") fail("a label name");
      names.push(next().text);
      if (!eat(",") && peek().text !== ")") fail('"," or ")"');
    }
    return names;
  };

  /** The series of a metric name as written, or null (reported) when the code exports no such series. */
  const seriesOf = (name: string): { labels: Set<string>; counterLike?: boolean } | null => {
    const m = catalog.get(name);
    if (m) {
      if (m.type === "histogram" || m.type === "summary")
        problem(`${name} is a ${m.type}: read its ${m.type === "histogram" ? "_bucket, " : ""}_sum or _count`);
      // a bare histogram is reported above: not again as rate()'s argument
      const counterLike = m.type === "counter" ? true : m.type === "gauge" ? false : undefined;
      return { labels: new Set(m.labels), counterLike };
    }
    for (const suffix of HISTOGRAM_SUFFIXES) {
      if (!name.endsWith(suffix)) continue;
      const base = catalog.get(name.slice(0, -suffix.length));
      if (!base) continue;
      if (base.type === "histogram" || (base.type === "summary" && suffix !== "_bucket")) {
        const labels = new Set(base.labels);
        if (suffix === "_bucket") labels.add("le");
        return { labels, counterLike: true };
      }
      problem(`${name}: ${name.slice(0, -suffix.length)} is a ${base.type}, not a histogram`);
      return null;
    }
    problem(`${name}: no such metric in the code's registries`);
    return null;
  };

  const checkHas = (labels: Labels, names: Iterable<string>, where: string) => {
    if (!labels) return;
    for (const n of names)
      if (!labels.has(n)) problem(`${where}: the series have no label "${n}" (they have ${show(labels)})`);
  };

  const selector = (name: string): Val => {
    const series = seriesOf(name);
    const use: SelectorUse = { name, matchers: [] };
    if (eat("{")) {
      while (!eat("}")) {
        if (peek().kind !== "ident") fail("a label name");
        const label = next().text;
        const op = next();
        if (op.kind !== "op" || !["=", "!=", "=~", "!~"].includes(op.text)) fail("a label matcher");
        if (peek().kind !== "str") fail("a string");
        use.matchers.push({ label, op: op.text, value: next().text });
        if (!eat(",") && peek().text !== "}") fail('"," or "}"');
      }
    }
    out.selectors.push(use);
    if (series) {
      checkHas(
        series.labels,
        use.matchers.map((m) => m.label).filter((l) => l !== "__name__"),
        `${name}{...} matcher`,
      );
    }
    return { t: "vector", labels: series?.labels ?? null, counterLike: series?.counterLike, name };
  };

  const args = (): Val[] => {
    expect("(");
    const list: Val[] = [];
    while (!eat(")")) {
      list.push(parseExpr(0));
      if (!eat(",") && peek().text !== ")") fail('"," or ")"');
    }
    return list;
  };
  const seriesArg = (
    fn: string,
    list: Val[],
    i: number,
    want: "vector" | "matrix",
  ): Val & { t: "vector" | "matrix" } => {
    const v = list[i];
    if (!v || (v.t !== "vector" && v.t !== "matrix")) throw new Error(`${fn}(): argument ${i + 1} is not a series`);
    if (v.t !== want)
      throw new Error(`${fn}(): argument ${i + 1} must be a ${want === "matrix" ? "range" : "instant"} vector`);
    return v;
  };

  const call = (fn: string): Val => {
    const list = args();
    if (fn === "vector") return { t: "vector", labels: new Set() };
    if (fn === "scalar" || fn === "time" || fn === "pi") return { t: "scalar" };
    if (fn === "absent" || fn === "absent_over_time") return { t: "vector", labels: new Set() };
    if (fn === "histogram_quantile") {
      const v = seriesArg(fn, list, 1, "vector");
      if (v.labels && !v.labels.has("le"))
        problem(`histogram_quantile(): its series have no "le" label (they have ${show(v.labels)})`);
      return { t: "vector", labels: v.labels && new Set([...v.labels].filter((l) => l !== "le")) };
    }
    if (fn === "label_replace" || fn === "label_join") {
      const v = seriesArg(fn, list, 0, "vector");
      const strs = list.slice(1).map((a) => (a.t === "string" ? a.value : ""));
      const sources = fn === "label_replace" ? [strs[2]] : strs.slice(2);
      checkHas(
        v.labels,
        sources.filter((s) => s),
        `${fn}() source`,
      );
      return { t: "vector", labels: v.labels && new Set([...v.labels, strs[0]]) };
    }
    if (!LABEL_KEEPING.has(fn)) throw new Error(`${fn}() is not a function this checker knows`);
    const i = list.findIndex((a) => a.t === "vector" || a.t === "matrix");
    const wantsRange =
      COUNTER_FUNCTIONS.has(fn) || /_over_time$|^(delta|idelta|deriv|changes|predict_linear)$/.test(fn);
    const v = seriesArg(fn, list, Math.max(i, 0), wantsRange ? "matrix" : "vector");
    if (COUNTER_FUNCTIONS.has(fn) && v.name && v.counterLike === false)
      problem(`${fn}(${v.name}): ${v.name} is not a counter`);
    return { t: "vector", labels: v.labels };
  };

  const aggregation = (op: string): Val => {
    let grouping: { without: boolean; labels: string[] } | undefined;
    const groupingClause = () => {
      if (isIdent("by") || isIdent("without")) {
        const without = next().text === "without";
        grouping = { without, labels: labelList() };
      }
    };
    groupingClause();
    const list = args();
    if (!grouping) groupingClause();
    const v = seriesArg(op, list, PARAM_AGGREGATIONS.has(op) ? 1 : 0, "vector");
    if (grouping) checkHas(v.labels, grouping.labels, `${op} ${grouping.without ? "without" : "by"} (...)`);
    let labels: Labels;
    if (op === "topk" || op === "bottomk" || op === "limitk" || op === "limit_ratio") labels = v.labels;
    else if (!grouping) labels = new Set();
    else if (grouping.without) labels = v.labels && new Set([...v.labels].filter((l) => !grouping!.labels.includes(l)));
    else labels = new Set(grouping.labels);
    if (op === "count_values" && labels && list[0].t === "string") labels.add(list[0].value);
    out.aggregations.push({ op, input: v.labels, output: labels });
    return { t: "vector", labels };
  };

  const postfix = (v: Val): Val => {
    for (;;) {
      if (peek().kind === "range") {
        const range = next().text;
        if (v.t !== "vector") throw new Error(`[${range}] on something that is not an instant vector`);
        // a range selector keeps the selector's kind (counter or not); a subquery's result is no selector's
        v = range.includes(":")
          ? { t: "matrix", labels: v.labels }
          : { t: "matrix", labels: v.labels, counterLike: v.counterLike, name: v.name };
      } else if (isIdent("offset")) {
        next();
        eat("-");
        if (peek().kind !== "dur") fail("a duration");
        next();
      } else if (eat("@")) {
        if (peek().kind === "num") next();
        else if (isIdent("start") || isIdent("end")) {
          next();
          expect("(");
          expect(")");
        } else fail("a timestamp");
      } else return v;
    }
  };

  const primary = (): Val => {
    const t = peek();
    if (t.kind === "num" || t.kind === "dur") {
      next();
      return { t: "scalar" };
    }
    if (t.kind === "str") {
      next();
      return { t: "string", value: t.text };
    }
    if (eat("(")) {
      const v = parseExpr(0);
      expect(")");
      return postfix(v.t === "vector" || v.t === "matrix" ? { t: v.t, labels: v.labels } : v);
    }
    if (t.kind === "punct" && t.text === "{") throw new Error("selectors without a metric name are not checked");
    if (t.kind !== "ident") fail("an expression");
    next();
    const lower = t.text.toLowerCase();
    if (lower === "inf" || lower === "nan") return { t: "scalar" };
    if (AGGREGATIONS.has(t.text) && (peek().text === "(" || isIdent("by") || isIdent("without")))
      return aggregation(t.text);
    if (peek().kind === "punct" && peek().text === "(") return postfix(call(t.text));
    return postfix(selector(t.text));
  };

  const unary = (): Val => {
    if (peek().kind === "op" && (peek().text === "-" || peek().text === "+")) {
      next();
      return parseExpr(PRECEDENCE["^"]);
    }
    return primary();
  };

  const binaryOp = (): string | undefined => {
    const t = peek();
    if (t.kind === "op" && t.text in PRECEDENCE) return t.text;
    if (t.kind === "ident" && (SET_OPS.has(t.text) || t.text === "atan2")) return t.text;
    return undefined;
  };

  const binary = (op: string, l: Val, r: Val, on?: string[], ignoring?: string[], group?: [string, string[]]): Val => {
    if (l.t === "string" || r.t === "string") throw new Error(`${op} on a string`);
    if (l.t === "matrix" || r.t === "matrix") throw new Error(`${op} on a range vector`);
    if (l.t === "scalar" && r.t === "scalar") return { t: "scalar" };
    if (l.t === "scalar") return { t: "vector", labels: (r as { labels: Labels }).labels };
    if (r.t === "scalar") return { t: "vector", labels: l.labels };
    if (on) {
      checkHas(l.labels, on, `${op} on (...), left side`);
      checkHas(r.labels, on, `${op} on (...), right side`);
    }
    if (ignoring && l.labels && r.labels)
      for (const n of ignoring)
        if (!l.labels.has(n) && !r.labels.has(n)) problem(`${op} ignoring (...): neither side has label "${n}"`);
    if (group) checkHas(group[0] === "group_left" ? r.labels : l.labels, group[1], `${group[0]}(...)`);
    if (!on && !ignoring && !SET_OPS.has(op) && l.labels && r.labels) {
      const same = l.labels.size === r.labels.size && [...l.labels].every((x) => r.labels!.has(x));
      if (!same)
        problem(
          `${op} between series with different labels, ${show(l.labels)} and ${show(r.labels)}, without on/ignoring: it matches nothing`,
        );
    }
    if (op === "and" || op === "unless") return { t: "vector", labels: l.labels };
    if (op === "or") return { t: "vector", labels: l.labels && r.labels && new Set([...l.labels, ...r.labels]) };
    if (group) {
      const many = group[0] === "group_left" ? l.labels : r.labels;
      return { t: "vector", labels: many && new Set([...many, ...group[1]]) };
    }
    if (on) return { t: "vector", labels: new Set(on) };
    if (ignoring)
      return { t: "vector", labels: l.labels && new Set([...l.labels].filter((x) => !ignoring.includes(x))) };
    return { t: "vector", labels: l.labels };
  };

  function parseExpr(minPrec: number): Val {
    let left = unary();
    for (;;) {
      const op = binaryOp();
      if (!op || PRECEDENCE[op] < minPrec) return left;
      next();
      if (isIdent("bool")) next();
      let on: string[] | undefined;
      let ignoring: string[] | undefined;
      let group: [string, string[]] | undefined;
      if (isIdent("on") || isIdent("ignoring")) {
        const kind = next().text;
        if (kind === "on") on = labelList();
        else ignoring = labelList();
        if (isIdent("group_left") || isIdent("group_right")) {
          const side = next().text;
          group = [side, peek().text === "(" ? labelList() : []];
        }
      }
      const right = parseExpr(op === "^" ? PRECEDENCE[op] : PRECEDENCE[op] + 1);
      left = binary(op, left, right, on, ignoring, group);
    }
  }

  try {
    const v = parseExpr(0);
    if (peek().kind !== "eof") fail("the end");
    if (v.t === "vector" || v.t === "matrix") out.labels = v.labels;
    else if (v.t === "string") out.problems.push("the query is a string");
  } catch (e) {
    out.problems.push(`does not parse: ${(e as Error).message}`);
  }
  return out;
}

/** The labels a Grafana legend format names (`{{pool}} / {{worker}}`); none for Grafana's automatic legend. */
export function legendLabels(legendFormat: string | undefined): string[] {
  if (!legendFormat || legendFormat === "__auto") return [];
  return [...legendFormat.matchAll(/\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g)].map((m) => m[1]);
}
