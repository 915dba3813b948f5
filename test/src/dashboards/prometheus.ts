// A real Prometheus server (Debian package `prometheus`) for tests: static scrape targets, 1 s scrape interval,
// throwaway storage, and a small HTTP API client.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";
import { ManagedProcess } from "../cluster/process.js";
import { freePorts, httpGet, waitUntil } from "../cluster/util.js";

export interface ScrapeJob {
  job: string;
  /** host:port, each with target labels added to its series (and to `up`), like the chart's monitors' relabelings. */
  targets: Array<{ address: string; labels?: Record<string, string> }>;
  /** Keep the scraped series' own labels on conflict (the PodMonitor sets honorLabels for workers). */
  honorLabels?: boolean;
  /**
   * Target relabelings as a prometheus-operator monitor spells them (sourceLabels, targetLabel, regex, replacement,
   * action, separator): the chart's own, applied to targets whose `__meta_*` labels stand in for service discovery.
   */
  relabelings?: Array<Record<string, unknown>>;
  /** The monitor's metricRelabelings, the same way: applied to each scraped series (e.g. the chart's drops). */
  metricRelabelings?: Array<Record<string, unknown>>;
}

const RELABEL_KEYS: Record<string, string> = {
  sourceLabels: "source_labels",
  targetLabel: "target_label",
  regex: "regex",
  replacement: "replacement",
  action: "action",
  separator: "separator",
  modulus: "modulus",
};

/** A monitor's relabeling (camelCase) as Prometheus' relabel_config; an unknown key is an error, not dropped. */
function relabelConfig(r: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(r).map(([k, v]) => {
      const key = RELABEL_KEYS[k];
      if (!key) throw new Error(`relabeling: unknown key ${k}`);
      return [key, v];
    }),
  );
}

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface TestPrometheus {
  url: string;
  process: ManagedProcess;
  /** Instant query; throws on an API error (bad PromQL) with Prometheus' message. */
  query(expr: string): Promise<PromSample[]>;
  /** Targets and their health as Prometheus sees them. */
  targets(): Promise<Array<{ job: string; health: string; lastError: string; scrapeUrl: string }>>;
  stop(): Promise<void>;
}

/** Prometheus' scrape config for static jobs; scrape every second so tests need only seconds of data. */
export function prometheusConfig(jobs: ScrapeJob[], ruleFiles: string[] = [], intervalSeconds = 1): string {
  return stringify({
    global: {
      scrape_interval: `${intervalSeconds}s`,
      scrape_timeout: `${intervalSeconds}s`,
      evaluation_interval: "2s",
    },
    rule_files: ruleFiles,
    scrape_configs: jobs.map((j) => ({
      job_name: j.job,
      honor_labels: j.honorLabels ?? false,
      static_configs: j.targets.map((t) => ({ targets: [t.address], labels: t.labels ?? {} })),
      ...(j.relabelings ? { relabel_configs: j.relabelings.map(relabelConfig) } : {}),
      ...(j.metricRelabelings ? { metric_relabel_configs: j.metricRelabelings.map(relabelConfig) } : {}),
    })),
  });
}

/** Starts Prometheus with its files in `dir`; `ruleFiles` are relative to `dir`. Resolves once it is ready. */
export async function startPrometheus(
  bin: string,
  dir: string,
  jobs: ScrapeJob[],
  ruleFiles: string[] = [],
): Promise<TestPrometheus> {
  mkdirSync(join(dir, "data"), { recursive: true });
  const config = join(dir, "prometheus.yml");
  writeFileSync(config, prometheusConfig(jobs, ruleFiles));
  const [port] = await freePorts(1);
  const url = `http://127.0.0.1:${port}`;
  const proc = new ManagedProcess(
    "prometheus",
    bin,
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--storage.tsdb.retention.time=1h",
      "--log.level=warn",
    ],
    join(dir, "prometheus.log"),
  );
  await waitUntil(async () => (await httpGet(`${url}/-/ready`)).status === 200, {
    what: "prometheus /-/ready",
    timeoutMs: 30_000,
    abortIf: () => (proc.exited ? `${proc.describeExit()}\n${proc.tail()}` : undefined),
  });
  const api = async (path: string) => {
    const r = await httpGet(`${url}${path}`, undefined, 10_000);
    let body: { status: string; data: unknown; error?: string };
    try {
      body = JSON.parse(r.body);
    } catch {
      throw new Error(`prometheus ${path}: HTTP ${r.status} ${r.body.slice(0, 200)}`);
    }
    if (body.status !== "success") throw new Error(`prometheus ${path}: ${body.error ?? r.body}`);
    return body.data;
  };
  return {
    url,
    process: proc,
    async query(expr) {
      const data = (await api(`/api/v1/query?query=${encodeURIComponent(expr)}`)) as {
        resultType: string;
        result: PromSample[];
      };
      return data.result;
    },
    async targets() {
      const data = (await api("/api/v1/targets")) as {
        activeTargets: Array<{ labels: { job: string }; health: string; lastError: string; scrapeUrl: string }>;
      };
      return data.activeTargets.map((t) => ({
        job: t.labels.job,
        health: t.health,
        lastError: t.lastError,
        scrapeUrl: t.scrapeUrl,
      }));
    },
    async stop() {
      await proc.stop();
    },
  };
}
