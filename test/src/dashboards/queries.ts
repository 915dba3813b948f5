// Pure helpers over dashboard JSON and PromQL text, shared by the static dashboard test and the live
// Prometheus test.

export interface PanelQuery {
  dashboard: string;
  panel: string;
  refId: string;
  expr: string;
  instant: boolean;
}

type DashboardJson = {
  title: string;
  panels: Array<{ type: string; title: string; targets?: Array<{ refId: string; expr: string; instant?: boolean }> }>;
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
        })),
      ),
  );
}

/**
 * Replaces Grafana's variables the way Grafana would for "All pools" and a given rate window, so the query can go
 * to Prometheus directly.
 */
export function substituteVariables(expr: string, opts: { rateInterval?: string; pool?: string } = {}): string {
  const rate = opts.rateInterval ?? "1m";
  return (
    expr
      .replaceAll("$__rate_interval", rate)
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana variable syntax, not a JS template.
      .replaceAll("${__rate_interval}", rate)
      .replaceAll("$__interval", rate)
      .replaceAll("$pool", opts.pool ?? ".*")
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

/** Metric names docs/CONTRACTS.md lists in backticks, with the series a histogram exposes. */
export function contractMetricNames(contracts: string): Set<string> {
  const names = new Set<string>();
  for (const m of contracts.matchAll(/`((?:switchyard|controller_runtime|workqueue)_[a-z0-9_]+)[`{]/g)) {
    for (const suffix of ["", "_bucket", "_sum", "_count"]) names.add(m[1] + suffix);
  }
  names.add("up"); // Prometheus' own scrape health series
  return names;
}
