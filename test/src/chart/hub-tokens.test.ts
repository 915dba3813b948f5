// operator.syncHubTokens: off (the default), no rule of the chart names Secrets and the operator gets no flag; on,
// the operator may get Secrets in the namespaces it watches (ClusterRole, or a Role in watchNamespace) and
// get/create/patch only the router's Secret of Hub tokens in the release namespace, and its command line names that
// Secret as the router mounts it.
import { parseOptions } from "@switchyard/operator";
import { describe, expect, it } from "vitest";
import { CHART, exec, findTool, type K8sObject, NAMESPACE, parseDocs, type Rule, templateArgs } from "./helm.js";

const helm = findTool("helm", "SWITCHYARD_HELM");
if (!helm)
  console.warn(
    "hub token chart tests SKIPPED: no helm binary (run scripts/ci/build-test-assets.sh or set SWITCHYARD_HELM)",
  );

type Role = K8sObject & { rules: Rule[] };
type Binding = K8sObject & { roleRef: { kind: string; name: string }; subjects: { name: string; namespace: string }[] };

async function render(...set: string[]): Promise<K8sObject[]> {
  const r = await exec(
    helm!,
    templateArgs(
      null,
      set.flatMap((s) => ["--set", s]),
    ),
  );
  if (r.code !== 0) throw new Error(`helm template ${set.join(" ")}: ${r.stderr}`);
  return parseDocs(r.stdout);
}

const roles = (objs: K8sObject[]) => objs.filter((o) => o.kind === "Role" || o.kind === "ClusterRole") as Role[];
const secretRules = (objs: K8sObject[]) =>
  roles(objs).flatMap((r) => r.rules.filter((x) => x.resources.includes("secrets")).map((rule) => ({ role: r, rule })));

function operatorArgs(objs: K8sObject[]): string[] {
  const d = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-operator")) as
    | (K8sObject & { spec: { template: { spec: { containers: { args: string[] }[] } } } })
    | undefined;
  return d?.spec.template.spec.containers[0].args ?? [];
}

/** The binding of `role` gives it to the operator's ServiceAccount, in the same scope. */
function expectBound(objs: K8sObject[], role: Role) {
  const kind = role.kind === "Role" ? "RoleBinding" : "ClusterRoleBinding";
  const b = objs.find(
    (o) =>
      o.kind === kind &&
      (o as Binding).roleRef.name === role.metadata.name &&
      o.metadata.namespace === role.metadata.namespace,
  ) as Binding | undefined;
  expect(b, `${kind} for ${role.kind}/${role.metadata.name}`).toBeTruthy();
  expect(b?.roleRef.kind).toBe(role.kind);
  expect(b?.subjects).toEqual([{ kind: "ServiceAccount", name: "sy-switchyard-operator", namespace: NAMESPACE }]);
}

describe.skipIf(!helm)("chart: operator.syncHubTokens", () => {
  it("off by default: no rule names Secrets, no flag, the operator parses to no sync", async () => {
    const objs = await render();
    expect(secretRules(objs)).toEqual([]);
    const args = operatorArgs(objs);
    expect(args.filter((a) => /hub-tokens|hf-tokens/.test(a))).toEqual([]);
    expect(parseOptions(args, {})).toMatchObject({ syncHubTokens: false });
    // same with a watched namespace
    expect(secretRules(await render("operator.watchNamespace=tenant-a"))).toEqual([]);
  });

  it("on, all namespaces: get on Secrets cluster-wide, get/create/patch only on the router's Secret", async () => {
    const objs = await render("operator.syncHubTokens=true");
    const found = secretRules(objs);
    expect(found.map(({ role, rule }) => [role.kind, role.metadata.name, role.metadata.namespace, rule])).toEqual([
      [
        "ClusterRole",
        "sy-switchyard-operator-pool-secrets",
        undefined,
        { apiGroups: [""], resources: ["secrets"], verbs: ["get"] },
      ],
      [
        "Role",
        "sy-switchyard-operator-router-hf-tokens",
        NAMESPACE,
        {
          apiGroups: [""],
          resources: ["secrets"],
          resourceNames: ["sy-switchyard-router-hf-tokens"],
          verbs: ["get", "create", "patch"],
        },
      ],
    ]);
    for (const { role } of found) expectBound(objs, role);
    // the Secret the operator writes is the one the router mounts
    const router = objs.find((o) => o.kind === "Deployment" && o.metadata.name.endsWith("-router")) as K8sObject & {
      spec: { template: { spec: { volumes: { name: string; secret?: { secretName: string } }[] } } };
    };
    const mounted = router.spec.template.spec.volumes.find((v) => v.name === "hf-tokens")?.secret?.secretName;
    expect(mounted).toBe("sy-switchyard-router-hf-tokens");
    const args = operatorArgs(objs);
    expect(args).toContain("--sync-hub-tokens");
    expect(parseOptions(args, {})).toMatchObject({
      syncHubTokens: true,
      routerHfTokensSecret: { namespace: NAMESPACE, name: mounted },
    });
  });

  it("on, with watchNamespace and router.hfTokensSecret: a Role in that namespace, the named Secret only", async () => {
    const objs = await render(
      "operator.syncHubTokens=true",
      "operator.watchNamespace=tenant-a",
      "router.hfTokensSecret=team-tokens",
    );
    expect(objs.filter((o) => o.kind.startsWith("Cluster"))).toEqual([]);
    const found = secretRules(objs);
    expect(found.map(({ role, rule }) => [role.metadata.namespace, rule.verbs, rule.resourceNames])).toEqual([
      ["tenant-a", ["get"], undefined],
      [NAMESPACE, ["get", "create", "patch"], ["team-tokens"]],
    ]);
    for (const { role } of found) expectBound(objs, role);
    expect(parseOptions(operatorArgs(objs), {})).toMatchObject({
      syncHubTokens: true,
      namespace: "tenant-a",
      routerHfTokensSecret: { namespace: NAMESPACE, name: "team-tokens" },
    });
  });

  it("never list or watch on Secrets, and nothing with the operator off", async () => {
    for (const { rule } of secretRules(await render("operator.syncHubTokens=true")))
      expect(rule.verbs.filter((v) => !["get", "create", "patch"].includes(v))).toEqual([]);
    expect(
      secretRules(await render("operator.syncHubTokens=true", "operator.enabled=false", "router.enabled=false")),
    ).toEqual([]);
  });

  it("the schema takes a boolean only", async () => {
    const r = await exec(helm!, ["template", "sy", CHART, "--set-string", "operator.syncHubTokens=yes"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("/operator/syncHubTokens");
  });
});
