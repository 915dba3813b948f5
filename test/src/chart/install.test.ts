// `helm install` of charts/switchyard into the real test cluster (etcd, kube-apiserver, controllers, scheduler,
// kwok): the release creates what it should and its pods become Ready on a fake node; the operator, run as a
// local process with the token of the chart's own ServiceAccount (so the chart's RBAC is what it gets), comes up,
// takes the Lease and reconciles an ExpertPool; `helm uninstall` removes everything but the CRDs, also what the operator
// made beside the release (the router ConfigMap, the Hub-token Secret: owned by its Deployment).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { ManagedProcess } from "../cluster/process.js";
import { freePorts, httpGet, waitUntil } from "../cluster/util.js";
import { describeWithCluster } from "../cluster/vitest.js";
import { CHART, NAMESPACE, parseDocs, RELEASE, REPO, templateArgs, VALUES_FILES } from "./helm.js";

/** kind/name references grouped by namespace ([] for cluster-scoped objects), for one kubectl call each. */
function byNamespace(objs: Array<{ kind: string; metadata: { name: string; namespace?: string } }>) {
  const out = new Map<string, string[]>();
  for (const o of objs) {
    const key = o.metadata.namespace ?? "";
    out.set(key, [...(out.get(key) ?? []), `${o.kind}/${o.metadata.name}`]);
  }
  return [...out].map(([ns, refs]) => [ns ? ["-n", ns] : [], refs] as const);
}

const OPERATOR_MAIN = join(REPO, "operator/dist/main.js");
const FULL = `${RELEASE}-switchyard`;

describeWithCluster("helm install charts/switchyard into the test cluster", { nodes: 1, gpusPerNode: 8 }, (cluster) => {
  let operator: ManagedProcess | undefined;
  let manifest: Array<{ kind: string; metadata: { name: string; namespace?: string } }> = [];
  afterAll(async () => {
    await operator?.stop();
  });

  it("installs: CRDs established, every rendered object exists, Deployments become available", async () => {
    const install = await cluster().helm([
      ...["install", RELEASE, CHART, "--namespace", NAMESPACE, "--create-namespace"],
      ...["--wait", "--timeout", "90s"],
    ]);
    expect(install.stdout).toContain("STATUS: deployed");
    expect(install.stdout).toContain("kubectl apply -f expertpool.yaml"); // NOTES.txt
    expect(install.stdout).toContain("https://github.com/switchyard-dev/switchyard/tree/main/examples");

    for (const crd of ["expertpools.switchyard.dev", "routingpolicies.switchyard.dev"]) {
      const r = await cluster().kubectl([
        "get",
        "crd",
        crd,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Established')].status}",
      ]);
      expect(r.stdout, crd).toBe("True");
    }
    manifest = parseDocs((await cluster().helm(["get", "manifest", RELEASE, "-n", NAMESPACE])).stdout);
    expect(manifest.length).toBeGreaterThanOrEqual(15);
    // One kubectl call per namespace for every rendered object (a missing one fails the whole get).
    for (const [ns, refs] of byNamespace(manifest)) {
      const r = await cluster().kubectl(["get", ...refs, ...ns, "-o", "name"], { check: false });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim().split("\n"), refs.join(" ")).toHaveLength(refs.length);
    }
    for (const d of [`${FULL}-operator`, `${FULL}-router`]) {
      const r = await cluster().kubectl([
        "get",
        "deployment",
        d,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.status.availableReplicas}",
      ]);
      expect(Number(r.stdout), d).toBe(d.endsWith("router") ? 2 : 1);
    }
    // The API server accepted the hardened pod spec (runAsNonRoot, read-only root, seccomp) as rendered.
    const pods = await cluster().kubectl([
      "get",
      "pods",
      "-n",
      NAMESPACE,
      "-o",
      "jsonpath={.items[*].spec.securityContext.seccompProfile.type}",
    ]);
    expect(pods.stdout.split(" ")).toEqual(["RuntimeDefault", "RuntimeDefault", "RuntimeDefault"]);
  }, 150_000);

  it("helm test creates the smoke Pod (never the install), keeps a failed one and deletes a passed one", async () => {
    // kwok only plays Running: nothing runs the check here, so each run's outcome is written into the Pod's status,
    // as a kubelet would once the container exits. What is under test is the hook: its Pod as the API server takes
    // it, when Helm creates it and what its delete policy leaves behind.
    const pod = `${FULL}-router-smoke`;
    const get = () => cluster().kubectl(["get", "pod", pod, "-n", NAMESPACE, "-o", "json", "--ignore-not-found"]);
    expect((await get()).stdout.trim(), "a test hook is not part of the install").toBe("");
    const runOnce = async (exitCode: number) => {
      const test = cluster().helm(["test", RELEASE, "-n", NAMESPACE, "--timeout", "60s"], {
        check: false,
        timeoutMs: 90_000,
      });
      let ended: string | undefined;
      void test.then((r) => {
        ended = `helm test ended (exit ${r.code}) before its Pod ran: ${r.stdout}${r.stderr}`;
      });
      let uid = "";
      await waitUntil(
        async () => {
          const o = JSON.parse((await get()).stdout || "{}");
          // A new Pod (the previous run's one, if any, deleted first by before-hook-creation), bound and Running.
          if (o.status?.phase !== "Running") return false;
          uid = o.metadata.uid;
          return true;
        },
        { what: `helm test's Pod ${pod} to run`, timeoutMs: 30_000, abortIf: () => ended },
      );
      const spec = JSON.parse((await get()).stdout).spec;
      const now = new Date().toISOString();
      const terminated = { exitCode, reason: exitCode ? "Error" : "Completed", startedAt: now, finishedAt: now };
      await cluster().kubectl([
        ...["patch", "pod", pod, "-n", NAMESPACE, "--subresource=status", "--type=merge", "-p"],
        JSON.stringify({
          status: {
            phase: exitCode ? "Failed" : "Succeeded",
            containerStatuses: spec.containers.map((c: { name: string; image: string }) => ({
              name: c.name,
              image: c.image,
              imageID: "",
              ready: false,
              restartCount: 0,
              state: { terminated },
            })),
          },
        }),
      ]);
      return { result: await test, uid, spec };
    };

    const failed = await runOnce(1);
    expect(failed.result.code, failed.result.stdout).not.toBe(0);
    expect(failed.result.stderr).toContain(pod);
    expect(failed.spec.containers[0].command).toEqual(["node", "router-service/dist/smoke/main.js"]);
    expect(failed.spec.automountServiceAccountToken).toBe(false);
    const kept = (await get()).stdout.trim();
    expect(kept, "a failed run's Pod stays for its logs").not.toBe("");
    expect(JSON.parse(kept).metadata.uid).toBe(failed.uid);

    const passed = await runOnce(0);
    expect(passed.result.code, passed.result.stderr).toBe(0);
    expect(passed.uid).not.toBe(failed.uid);
    expect(passed.result.stdout).toMatch(new RegExp(`TEST SUITE:\\s+${pod}[\\s\\S]*Phase:\\s+Succeeded`));
    await waitUntil(async () => (await get()).stdout.trim() === "", {
      what: `the passed run's Pod ${pod} to be deleted (hook-succeeded)`,
      timeoutMs: 30_000,
    });
  }, 150_000);

  it("a second release's operator over the same pools is refused; one without an operator installs", async () => {
    // The first release's operator is cluster-wide. Two operators would force-apply different worker templates
    // (--metrics-pool) onto the same pools and roll them without end. --dry-run=server runs the chart's lookup.
    const install = (release: string, namespace: string, ...set: string[]) =>
      cluster().helm(
        [
          ...["install", release, CHART, "--namespace", namespace, "--create-namespace", "--dry-run=server"],
          ...set.flatMap((s) => ["--set", s]),
        ],
        { check: false },
      );
    const second = (...set: string[]) => install("second", "second", ...set);
    const refused = (r: { code: number; stdout: string; stderr: string }, what: string, theirs: string) => {
      expect(r.code, `${what}: ${r.stdout}`).not.toBe(0);
      expect(r.stderr, what).toContain("another Switchyard operator already reconciles");
      expect(r.stderr, what).toContain(theirs);
    };
    const first = `ClusterRole ${FULL}-operator (release ${NAMESPACE}/${RELEASE})`;
    for (const set of [[], ["operator.watchNamespace=tenant-b"]]) refused(await second(...set), String(set), first);
    // The same release name in another namespace is another release (Helm's ownership annotations, not the
    // app.kubernetes.io/instance label, say whose the ClusterRole is).
    refused(await install(RELEASE, "elsewhere"), `${RELEASE} in namespace elsewhere`, first);

    // An operator whose release set nameOverride (app.kubernetes.io/name: moe) and one applied without Helm
    // (operator/deploy/rbac.yaml): their watch Roles as Helm and kubectl would leave them.
    await cluster().kubectl(["create", "namespace", "tenant-c"]);
    const rendered = parseDocs(
      (
        await cluster().helm([
          ...["template", "third", CHART, "--namespace", "third", "--show-only", "templates/operator-rbac.yaml"],
          ...["--set", "nameOverride=moe", "--set", "operator.watchNamespace=tenant-c"],
        ])
      ).stdout,
    );
    const role = rendered.find((o) => o.kind === "Role" && o.metadata.name === "third-moe-operator");
    expect(role?.metadata.labels?.["app.kubernetes.io/name"]).toBe("moe");
    role!.metadata.annotations = { "meta.helm.sh/release-name": "third", "meta.helm.sh/release-namespace": "third" };
    const raw = parseDocs(readFileSync(join(REPO, "operator/deploy/rbac.yaml"), "utf8")).find(
      (o) => o.kind === "ClusterRole",
    )!;
    await cluster().kubectl(["apply", "-f", "-"], { input: [role, raw].map((o) => JSON.stringify(o)).join("\n") });
    try {
      const r = await second("operator.watchNamespace=tenant-c");
      refused(r, "nameOverride", "Role third-moe-operator (release third/third, watching namespace tenant-c)");
      refused(r, "without Helm", `ClusterRole ${raw.metadata.name} (not installed by Helm)`);
    } finally {
      await cluster().kubectl(["delete", "role", "third-moe-operator", "-n", "tenant-c"]);
      await cluster().kubectl(["delete", "clusterrole", raw.metadata.name]);
    }

    // Without an operator: more routers on the first release's router config, in its namespace; or none at all.
    const noConfig = await install("extra", NAMESPACE, "operator.enabled=false");
    expect(noConfig.code).not.toBe(0);
    expect(noConfig.stderr).toContain("router.enabled is true but operator.enabled is false");
    const routers = await install("extra", NAMESPACE, "operator.enabled=false", `router.configMapName=${FULL}-router`);
    expect(routers.code, routers.stderr).toBe(0);
    const alone = await second("operator.enabled=false", "router.enabled=false");
    expect(alone.code, alone.stderr).toBe(0);
    // and the first release's own upgrade finds only itself (its ClusterRole, and Deployments whose selectors stay)
    const own = await cluster().helm(["upgrade", RELEASE, CHART, "-n", NAMESPACE, "--dry-run=server"], {
      check: false,
    });
    expect(own.code, own.stderr).toBe(0);
  }, 60_000);

  it("an upgrade that would change the Deployments' selectors (nameOverride) is refused before anything is applied", async () => {
    const status = async () =>
      JSON.parse((await cluster().helm(["status", RELEASE, "-n", NAMESPACE, "-o", "json"])).stdout) as {
        version: number;
        info: { status: string };
      };
    const before = await status();
    // fullnameOverride keeps every name, so Helm would update the Deployments in place: the API server refuses their
    // new selector only after the Services have been switched to it.
    const r = await cluster().helm(
      [
        ...["upgrade", RELEASE, CHART, "-n", NAMESPACE, "--reuse-values"],
        ...["--set", `fullnameOverride=${FULL}`, "--set", "nameOverride=moe"],
      ],
      { check: false },
    );
    expect(r.code, r.stdout).not.toBe(0);
    expect(r.stderr).toContain(`Deployment ${NAMESPACE}/${FULL}-`);
    expect(r.stderr).toContain('Keep nameOverride as installed (the live app.kubernetes.io/name is "switchyard")');
    const after = await status();
    expect(after.version).toBe(before.version);
    expect(after.info.status).toBe("deployed");
    const selector = await cluster().kubectl([
      ...["get", "service", `${FULL}-router`, "-n", NAMESPACE, "-o", "jsonpath={.spec.selector}"],
    ]);
    expect(JSON.parse(selector.stdout)["app.kubernetes.io/name"]).toBe("switchyard");
    // the same names and selectors pass
    const same = await cluster().helm(
      [
        ...["upgrade", RELEASE, CHART, "-n", NAMESPACE, "--reuse-values", "--dry-run=server"],
        ...["--set", `fullnameOverride=${FULL}`],
      ],
      { check: false },
    );
    expect(same.code, same.stderr).toBe(0);
  }, 60_000);

  it("the API server accepts the other values files' manifests (server-side dry run)", async () => {
    await cluster().kubectl(["create", "namespace", "tenant-a"]);
    await cluster().kubectl(["create", "namespace", "monitoring"]);
    for (const [name, file] of Object.entries(VALUES_FILES)) {
      if (!file) continue;
      const r = await cluster().helm(templateArgs(file));
      // The Prometheus Operator's CRDs are not in the test cluster; everything else must validate.
      const objs = parseDocs(r.stdout).filter((o) => !o.apiVersion.startsWith("monitoring.coreos.com/"));
      const dry = await cluster().kubectl(["apply", "--dry-run=server", "-f", "-"], {
        input: objs.map((o) => JSON.stringify(o)).join("\n"),
        check: false,
      });
      expect(dry.code, `${name}: ${dry.stderr}`).toBe(0);
      expect(dry.stdout.trim().split("\n"), name).toHaveLength(objs.length);
    }
  }, 60_000);

  it("the chart's ServiceAccount may do what the operator needs and no more", async () => {
    const sa = `system:serviceaccount:${NAMESPACE}:${FULL}-operator`;
    const can = async (...args: string[]) =>
      (await cluster().kubectl(["auth", "can-i", ...args, "--as", sa], { check: false })).stdout.trim();
    expect(await can("watch", "expertpools.switchyard.dev", "-A")).toBe("yes");
    // get: a child whose create met an object of that name is read to see whose it is (ChildConflict).
    expect(await can("get", "statefulsets.apps", "-n", "default")).toBe("yes");
    expect(await can("update", "statefulsets.apps", "-n", "default")).toBe("no");
    expect(await can("delete", "statefulsets.apps", "-n", "default")).toBe("no");
    expect(await can("patch", "expertpools.switchyard.dev", "--subresource=status", "-n", "default")).toBe("yes");
    expect(await can("patch", "expertpools.switchyard.dev", "-n", "default")).toBe("no");
    expect(await can("patch", "statefulsets.apps", "-n", "default")).toBe("yes");
    expect(await can("create", "configmaps", "-n", "default")).toBe("yes");
    expect(await can("update", `leases.coordination.k8s.io/${FULL}-operator`, "-n", NAMESPACE)).toBe("yes");
    expect(await can("update", "leases.coordination.k8s.io/another-release", "-n", NAMESPACE)).toBe("no");
    expect(await can("update", "leases.coordination.k8s.io", "-n", "default")).toBe("no");
    expect(await can("get", "secrets", "-n", NAMESPACE)).toBe("no");
    expect(await can("delete", "expertpools.switchyard.dev", "-n", "default")).toBe("no");
    expect(await can("create", "pods", "-n", "default")).toBe("no");
    // The StatefulSets' FailedCreate events (pods refused at admission), and its own Deployment (the owner it gives
    // the router ConfigMap and Hub-token Secret), by name only.
    expect(await can("watch", "events", "-A")).toBe("yes");
    expect(await can("get", `deployments.apps/${FULL}-operator`, "-n", NAMESPACE)).toBe("yes");
    expect(await can("get", `deployments.apps/${FULL}-router`, "-n", NAMESPACE)).toBe("no");
    const router = `system:serviceaccount:${NAMESPACE}:${FULL}-router`;
    expect(
      (
        await cluster().kubectl(["auth", "can-i", "list", "configmaps", "-n", NAMESPACE, "--as", router], {
          check: false,
        })
      ).stdout.trim(),
    ).toBe("no");
  });

  it("the README's upgrade story works: server-side apply of crds/ over Helm's CRDs, then helm upgrade", async () => {
    // Helm created the CRDs with its own field manager; the documented command must take them over cleanly.
    const apply = await cluster().kubectl([
      ...["apply", "--server-side", "--force-conflicts", "--field-manager=switchyard-crds"],
      ...["-f", join(CHART, "crds")],
    ]);
    expect(apply.stdout).toContain("expertpools.switchyard.dev serverside-applied");
    const upgrade = await cluster().helm([
      ...["upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--wait", "--timeout", "60s"],
      ...["--set", "router.replicas=3"],
    ]);
    expect(upgrade.stdout).toContain("STATUS: deployed");
    expect(upgrade.stdout).toContain("REVISION: 2");
    const r = await cluster().kubectl([
      "get",
      "deployment",
      `${FULL}-router`,
      "-n",
      NAMESPACE,
      "-o",
      "jsonpath={.status.availableReplicas}",
    ]);
    expect(r.stdout).toBe("3");
    // Turning the HPA on in the running release keeps the live replicas (the template looks them up): without it the
    // upgrade's three-way merge would drop the field and the Deployment would fall to 1 replica until the HPA acts.
    const hpa = await cluster().helm([
      ...["upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--reuse-values"],
      ...["--set", "router.autoscaling.enabled=true", "--set", "router.autoscaling.minReplicas=2"],
    ]);
    expect(hpa.stdout).toContain("REVISION: 3");
    const spec = await cluster().kubectl([
      ...["get", "deployment", `${FULL}-router`, "-n", NAMESPACE, "-o", "jsonpath={.spec.replicas}"],
    ]);
    expect(spec.stdout).toBe("3");
    const got = await cluster().kubectl([
      "get",
      "hpa",
      `${FULL}-router`,
      "-n",
      NAMESPACE,
      "-o",
      "jsonpath={.spec.minReplicas}",
    ]);
    expect(got.stdout).toBe("2");
  }, 90_000);

  it("the operator (local process, chart ServiceAccount token) comes up, leads and reconciles an ExpertPool", async () => {
    if (!existsSync(OPERATOR_MAIN)) throw new Error(`${OPERATOR_MAIN} is not built: run npm run build`);
    // With the Hub token sync on, so that the operator makes the router's Secret too (uninstall must take it away).
    await cluster().helm([
      ...["upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--reuse-values"],
      ...["--set", "operator.syncHubTokens=true"],
    ]);
    // A kubeconfig carrying a token of the chart's ServiceAccount: the process gets exactly the chart's RBAC.
    const token = (
      await cluster().kubectl(["create", "token", `${FULL}-operator`, "-n", NAMESPACE, "--duration", "1h"])
    ).stdout.trim();
    const dir = join(cluster().dir, "chart-operator");
    mkdirSync(dir, { recursive: true });
    const kubeconfig = join(dir, "kubeconfig");
    writeFileSync(
      kubeconfig,
      stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{ name: "test", cluster: { server: cluster().server, "insecure-skip-tls-verify": true } }],
        users: [{ name: "operator", user: { token } }],
        contexts: [{ name: "test", context: { cluster: "test", user: "operator", namespace: NAMESPACE } }],
        "current-context": "test",
      }),
    );
    // The same flags and env the chart's Deployment gives the container.
    const deploy = JSON.parse(
      (await cluster().kubectl(["get", "deployment", `${FULL}-operator`, "-n", NAMESPACE, "-o", "json"])).stdout,
    );
    const container = deploy.spec.template.spec.containers[0];
    const [metricsPort, healthPort] = await freePorts(2);
    const args = (container.args as string[])
      .map((a) => a.replace(/^--metrics-port=\d+$/, `--metrics-port=${metricsPort}`))
      .map((a) => a.replace(/^--health-port=\d+$/, `--health-port=${healthPort}`));
    expect(args).toContain("--leader-elect");
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      KUBECONFIG: kubeconfig,
      POD_NAMESPACE: NAMESPACE,
      POD_NAME: "operator-local-0",
    };
    for (const e of container.env as Array<{ name: string; value?: string }>)
      if (e.value !== undefined) env[e.name] = e.value;
    operator = new ManagedProcess(
      "operator",
      process.execPath,
      [OPERATOR_MAIN, ...args],
      join(dir, "operator.log"),
      env,
    );

    await waitUntil(async () => (await httpGet(`http://127.0.0.1:${healthPort}/readyz`)).status === 200, {
      what: "operator /readyz",
      timeoutMs: 60_000,
      abortIf: () => (operator?.exited ? `${operator.describeExit()}\n${operator.tail()}` : undefined),
    });
    expect((await httpGet(`http://127.0.0.1:${healthPort}/healthz`)).status).toBe(200);
    await waitUntil(
      async () => {
        const r = await cluster().kubectl([
          "get",
          "leases",
          "-n",
          NAMESPACE,
          "-o",
          "jsonpath={.items[*].spec.holderIdentity}",
        ]);
        return r.stdout.includes("operator-local-0");
      },
      { what: "the operator to hold a Lease in the release namespace", timeoutMs: 60_000 },
    );

    expect(args).toContain(`--owner-deployment=${NAMESPACE}/${FULL}-operator`);
    await cluster().kubectl(["create", "secret", "generic", "hf", "-n", "default", "--from-literal=HF_TOKEN=hf_test"]);
    await cluster().kubectl(["apply", "-f", "-"], {
      input: stringify({
        apiVersion: "switchyard.dev/v1alpha1",
        kind: "ExpertPool",
        metadata: { name: "hubby", namespace: "default" },
        spec: {
          model: {
            architecture: "mixtral",
            layers: 2,
            experts: 4,
            topK: 2,
            hiddenSize: 64,
            intermediateSize: 128,
            checkpoint: { uri: "hf://org/tiny", tokenSecret: { name: "hf" } },
          },
          replicas: 0,
        },
      }),
    });
    await cluster().kubectl(["apply", "-f", "-"], {
      input: stringify({
        apiVersion: "switchyard.dev/v1alpha1",
        kind: "ExpertPool",
        metadata: { name: "tiny", namespace: "default" },
        spec: {
          model: {
            architecture: "mixtral",
            layers: 2,
            experts: 4,
            topK: 2,
            hiddenSize: 64,
            intermediateSize: 128,
            checkpoint: { hostPath: { path: "/models/tiny" } },
          },
          replicas: 2,
          worker: { image: "ghcr.io/switchyard-dev/switchyard-worker:0.1.0-cuda", gpusPerWorker: 1 },
        },
      }),
    });
    await waitUntil(
      async () =>
        (await cluster().kubectl(["get", "statefulset", "tiny", "-n", "default", "-o", "name"], { check: false }))
          .code === 0,
      {
        what: "the operator to create the pool's StatefulSet",
        timeoutMs: 60_000,
        abortIf: () => (operator?.exited ? `${operator.describeExit()}\n${operator.tail()}` : undefined),
      },
    );
    // The router config lands in the ConfigMap the chart's router Deployment mounts.
    const routerDeploy = JSON.parse(
      (await cluster().kubectl(["get", "deployment", `${FULL}-router`, "-n", NAMESPACE, "-o", "json"])).stdout,
    );
    const mounted = routerDeploy.spec.template.spec.volumes.find((v: { name: string }) => v.name === "config").configMap
      .name;
    await waitUntil(
      async () => {
        const r = await cluster().kubectl(["get", "configmap", mounted, "-n", NAMESPACE, "-o", "json"], {
          check: false,
        });
        if (r.code !== 0) return false;
        const doc = JSON.parse(JSON.parse(r.stdout).data?.["router.json"] ?? "{}");
        return Array.isArray(doc.pools) && doc.pools.some((p: { name: string }) => p.name === "default/tiny");
      },
      { what: `router config for default/tiny in ConfigMap ${NAMESPACE}/${mounted}`, timeoutMs: 30_000 },
    );
    // Both made by the operator beside the release, owned by its Deployment: the garbage collector deletes them with it.
    const deployUid = deploy.metadata.uid as string;
    for (const ref of [`configmap/${mounted}`, `secret/${FULL}-router-hf-tokens`]) {
      await waitUntil(
        async () => {
          const r = await cluster().kubectl(["get", ref, "-n", NAMESPACE, "-o", "json"], { check: false });
          if (r.code !== 0) return false;
          const owners = (JSON.parse(r.stdout).metadata.ownerReferences ?? []) as Array<{ kind: string; uid: string }>;
          return owners.some((o) => o.kind === "Deployment" && o.uid === deployUid);
        },
        { what: `${ref} owned by Deployment ${FULL}-operator`, timeoutMs: 30_000 },
      );
    }
    const metrics = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain("controller_runtime_reconcile_total");
    expect(metrics.body).toContain("workqueue_depth");
    await cluster().kubectl(["delete", "expertpool", "tiny", "hubby", "-n", "default", "--wait=false"]);
  }, 150_000);

  it("helm uninstall removes every release object and keeps the CRDs", async () => {
    if (manifest.length === 0) throw new Error("the install test did not run");
    await operator?.stop();
    operator = undefined;
    await cluster().helm(["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "60s"]);
    await waitUntil(
      async () => {
        for (const [ns, refs] of byNamespace(manifest)) {
          const r = await cluster().kubectl(["get", ...refs, ...ns, "-o", "name", "--ignore-not-found"]);
          if (r.stdout.trim() !== "") return false;
        }
        return true;
      },
      { what: "every release object to be deleted", timeoutMs: 30_000 },
    );
    const pods = await cluster().kubectl(["get", "pods", "-n", NAMESPACE, "-o", "name"]);
    expect(pods.stdout.trim()).toBe("");
    // Nor what the operator made beside the release: the router ConfigMap and the Hub-token Secret (owned by the
    // operator's Deployment, so the garbage collector deletes them after it). What stays is the cluster's own
    // (kube-root-ca.crt, the default ServiceAccount) and the operator's leader-election Lease.
    await waitUntil(
      async () => {
        const r = await cluster().kubectl(["get", "configmaps,secrets", "-n", NAMESPACE, "-o", "name"]);
        return r.stdout.trim() === "configmap/kube-root-ca.crt";
      },
      { what: `only kube-root-ca.crt among the ConfigMaps and Secrets of ${NAMESPACE}`, timeoutMs: 60_000 },
    );
    // The Lease the operator made at run time stays (no release object, no owner); the chart README's uninstall
    // section says so and gives this command to remove it.
    const lease = await cluster().kubectl(["-n", NAMESPACE, "get", "leases", "-o", "name"]);
    expect(lease.stdout.trim()).toBe(`lease.coordination.k8s.io/${FULL}-operator`);
    const readme = readFileSync(join(REPO, "charts/switchyard/README.md"), "utf8");
    expect(readme).toContain("`kubectl -n <release namespace> delete lease <fullname>-operator`");
    await cluster().kubectl(["-n", NAMESPACE, "delete", "lease", `${FULL}-operator`]);
    // Helm never deletes CRDs (that would delete every pool); the README documents removing them by hand.
    const crds = await cluster().kubectl(["get", "crd", "-o", "name"]);
    expect(crds.stdout).toContain("expertpools.switchyard.dev");
  }, 120_000);
});
