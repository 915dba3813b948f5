// No Docker here, so the Dockerfiles are checked statically against the chart and the contracts: the uid the chart
// runs pods as, the command lines of docs/CONTRACTS.md, the ports of the default values, and COPY sources that exist.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { DATA_PATH_NODE_FLAGS } from "@switchyard/moe";
import { WORKER_DATA_PORT, WORKER_GRPC_PORT, WORKER_METRICS_PORT } from "@switchyard/operator";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { CHART, REPO } from "./helm.js";

interface Instr {
  op: string;
  args: string;
}

/** Dockerfile instructions with line continuations joined and comments dropped, split into stages. */
export function parseDockerfile(text: string): Instr[][] {
  const lines = text.replace(/\\\n/g, " ").split("\n");
  const stages: Instr[][] = [];
  for (const line of lines) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const [op, ...rest] = t.split(/\s+/);
    const instr = { op: op.toUpperCase(), args: rest.join(" ") };
    if (instr.op === "FROM") stages.push([]);
    if (stages.length) stages[stages.length - 1].push(instr);
    else if (instr.op !== "ARG") throw new Error(`instruction before FROM: ${t}`);
  }
  return stages;
}

const values = parse(readFileSync(join(CHART, "values.yaml"), "utf8"));
const contracts = readFileSync(join(REPO, "docs/CONTRACTS.md"), "utf8");

// The operator starts every worker on these ports (operator/src/controller/names.ts); the chart has no value for them.
const WORKER_PORTS = [WORKER_GRPC_PORT, WORKER_DATA_PORT, WORKER_METRICS_PORT];

const IMAGES = [
  {
    file: "operator.Dockerfile",
    main: "operator/dist/main.js",
    ports: [values.operator.metricsPort, values.operator.healthPort],
  },
  {
    file: "router.Dockerfile",
    main: "router-service/dist/main.js",
    // every port the router listens on by default (router-service/src/args.ts): gRPC, the engines' data path, metrics
    ports: [values.router.grpcPort, values.router.dataPort, values.router.metricsPort],
    flags: DATA_PATH_NODE_FLAGS,
  },
  {
    file: "worker.Dockerfile",
    main: "expert-worker/dist/main.js",
    ports: WORKER_PORTS,
    flags: DATA_PATH_NODE_FLAGS,
  },
  {
    file: "worker-cuda.Dockerfile",
    main: "expert-worker/dist/main.js",
    ports: WORKER_PORTS,
    flags: DATA_PATH_NODE_FLAGS,
  },
];

describe("Dockerfiles", () => {
  it.each(IMAGES)("$file runs the contract's command as the chart's non-root uid", ({ file, main, ports, ...o }) => {
    const stages = parseDockerfile(readFileSync(join(REPO, "docker", file), "utf8"));
    expect(stages.length, "multi-stage: build tools stay out of the runtime image").toBeGreaterThanOrEqual(2);
    const final = stages[stages.length - 1];
    const get = (op: string) => final.filter((i) => i.op === op).map((i) => i.args);
    const sc = values.podSecurityContext;
    expect(get("USER").at(-1)).toBe(`${sc.runAsUser}:${sc.runAsGroup}`);
    expect(contracts).toContain(`node ${main}`);
    // V8 flags a process runs with in every mode (router: node-flags.ts) are in the image's command line too.
    const flags = "flags" in o ? (o.flags as readonly string[]) : [];
    expect(JSON.parse(get("ENTRYPOINT").at(-1)!)).toEqual(["node", ...flags, main]);
    expect(get("EXPOSE").join(" ").split(" ").map(Number).sort()).toEqual([...ports].sort());
    expect(existsSync(join(REPO, "docker", `${file}.dockerignore`)), "a .dockerignore beside it").toBe(true);
    for (const stage of stages) {
      const from = stage[0].args.split(/\s+/)[0];
      expect(from, `${file}: base image has an explicit tag`).toMatch(/^[\w./-]+:[\w.${}-]+$/);
      expect(from).not.toMatch(/:latest$/);
      for (const copy of stage.filter((i) => i.op === "COPY" && !i.args.includes("--from"))) {
        // The last word is the destination; the others are sources relative to the repository root.
        for (const src of copy.args.split(/\s+/).slice(0, -1)) {
          expect(existsSync(join(REPO, src)), `${file}: COPY ${src} exists`).toBe(true);
        }
      }
    }
  });

  it("the router image holds the smoke check the chart's `helm test` Pod runs in it", () => {
    const hook = readFileSync(join(CHART, "templates/tests/router-smoke.yaml"), "utf8");
    const script = /command: \[node, (router-service\/dist\/[\w/.-]+\.js)\]/.exec(hook)?.[1];
    expect(script, "the hook runs a script of the router's dist").toBe("router-service/dist/smoke/main.js");
    // tsc builds it from the source beside it, and the image copies the whole dist
    expect(existsSync(join(REPO, script!.replace("/dist/", "/src/").replace(/\.js$/, ".ts")))).toBe(true);
    const final = parseDockerfile(readFileSync(join(REPO, "docker/router.Dockerfile"), "utf8")).at(-1)!;
    expect(final.filter((i) => i.op === "COPY").map((i) => i.args)).toContain(
      "--from=build /src/router-service/dist/ router-service/dist/",
    );
  });

  it("the router image builds and holds every native addon the router's code loads", () => {
    const src = (f: string) => readFileSync(join(REPO, f), "utf8");
    // Its own (combine, logits, gate), and the expert worker's CPU kernels, which run a shared expert the router
    // computes itself (checkpoint-model.ts sharedBatch); without one the router falls back to TypeScript, silently slow.
    expect(src("router-service/src/checkpoint-model.ts")).toMatch(
      /import \{[^}]*\bloadNativeAddon\b[^}]*\} from "@switchyard\/expert-worker"/,
    );
    const stages = parseDockerfile(src("docker/router.Dockerfile"));
    const runs = stages[0].filter((i) => i.op === "RUN").map((i) => i.args);
    // scripts/build-native.mjs skips the build, with a warning only, where there is no cmake
    expect(runs.join("\n")).toMatch(/apt-get install [^&]*\bcmake\b/);
    const copies = stages
      .at(-1)!
      .filter((i) => i.op === "COPY")
      .map((i) => i.args);
    for (const [pkg, loader] of [
      ["router-service", "src/core/native-combine.ts"],
      ["expert-worker", "src/backend/native-cpu.ts"],
    ]) {
      const rel = /resolve\(here, "\.\.\/\.\.\/(build\/\w+\.node)"\)/.exec(src(`${pkg}/${loader}`))?.[1];
      expect(rel, `${pkg}/${loader} loads its addon from ${pkg}/build`).toBeDefined();
      const addon = `${pkg}/${rel}`;
      const name = JSON.parse(src(`${pkg}/package.json`)).name as string;
      expect(runs.join("\n"), `the build stage builds ${addon}`).toContain(`npm run build --workspace ${name}`);
      expect(copies, `the runtime stage holds ${addon}`).toContain(`--from=build /src/${addon} ${dirname(addon)}/`);
    }
  });

  it.each(["worker.Dockerfile", "worker-cuda.Dockerfile"])(
    "%s holds the checkpoint fetcher the operator's init container runs for checkpoint.uri",
    (file) => {
      // operator/src/controller/desired.ts fetchCheckpointContainer: node packages/moe/dist/fetch-main.js
      expect(existsSync(join(REPO, "packages/moe/src/fetch-main.ts"))).toBe(true);
      const final = parseDockerfile(readFileSync(join(REPO, "docker", file), "utf8")).at(-1)!;
      expect(final.filter((i) => i.op === "COPY").map((i) => i.args)).toContain(
        "--from=build /src/packages/moe/dist/ packages/moe/dist/",
      );
    },
  );

  it("the CUDA worker runs on a CUDA runtime base and the CPU one on plain Node", () => {
    const last = (f: string) => parseDockerfile(readFileSync(join(REPO, "docker", f), "utf8")).at(-1)![0].args;
    expect(last("worker-cuda.Dockerfile")).toMatch(/^nvidia\/cuda:\$\{CUDA_VERSION\}-runtime-/);
    expect(last("worker.Dockerfile")).toMatch(/^node:20-/);
  });

  it("no image installs a BLAS: the CPU addon has its own kernels and links none", () => {
    // The worker images once installed OpenBLAS for a CPU backend that no longer uses it (CMakeLists.txt links only
    // Threads): a dead package in every pull, and a false claim in the image's description.
    const cmake = readFileSync(join(REPO, "expert-worker/native/CMakeLists.txt"), "utf8");
    expect(cmake).not.toMatch(/find_package\(\s*BLAS|target_link_libraries\([^)]*blas/i);
    for (const f of ["worker.Dockerfile", "worker-cuda.Dockerfile", "router.Dockerfile", "operator.Dockerfile"]) {
      const text = readFileSync(join(REPO, "docker", f), "utf8");
      expect(text, f).not.toMatch(/openblas|libblas|atlas/i);
    }
  });

  it("parses continuations and stages", () => {
    const s = parseDockerfile("ARG X=1\nFROM a:1 AS b\nRUN x \\\n && y\nFROM c:2\nUSER 1:1\n");
    expect(s).toEqual([
      [
        { op: "FROM", args: "a:1 AS b" },
        { op: "RUN", args: "x && y" },
      ],
      [
        { op: "FROM", args: "c:2" },
        { op: "USER", args: "1:1" },
      ],
    ]);
  });
});
