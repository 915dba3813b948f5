// Wires informers, controllers, leader election, metrics and health endpoints. Caches start at once (a standby
// keeps them warm); controllers run only while this replica holds the Lease (or always without --leader-elect).
import type { Server } from "node:http";
import { hostname } from "node:os";
import type { KubeConfig, V1ConfigMap, V1Pod, V1Service, V1StatefulSet } from "@kubernetes/client-node";
import express from "express";
import type { ExpertPool, RoutingPolicy } from "./api/v1alpha1.js";
import type { WorkerPodDefaults } from "./controller/desired.js";
import { HubTokenSync } from "./controller/hub-token-sync.js";
import {
  COMPONENT_LABEL,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  POOL_LABEL,
  planConfigMapName,
  WORKER_COMPONENT,
} from "./controller/names.js";
import {
  PolicyReconciler,
  policyKeysForPool,
  RouterConfigFit,
  RouterConfigReconciler,
} from "./controller/policy-controller.js";
import { PoolReconciler, splitKey } from "./controller/pool-controller.js";
import type { EventLike } from "./controller/pool-status.js";
import { Controller } from "./runtime/controller.js";
import { EventRecorder } from "./runtime/events.js";
import { Informer, type InformerEvent } from "./runtime/informer.js";
import { Kube, type KubeObject, paths } from "./runtime/kube.js";
import { LeaderElector } from "./runtime/leader.js";
import { createLogger, type Logger, type LogLevel, writeLine } from "./runtime/log.js";
import { OperatorMetrics, poolReadiness } from "./runtime/metrics.js";
import { RecentWrites } from "./runtime/recent.js";

export interface ManagerOptions {
  kubeConfig: KubeConfig;
  /** Watch one namespace; undefined = all namespaces. */
  namespace?: string;
  metricsPort?: number;
  healthPort?: number;
  leaderElect?: boolean;
  leaseNamespace?: string;
  leaseName?: string;
  identity?: string;
  routerConfigMap?: { namespace: string; name: string };
  /**
   * Keep the router's Secret of Hub tokens (routerHfTokensSecret) in step with the hf:// pools' tokenSecrets
   * (controller/hub-tokens.ts). Off (the default): the operator reads no Secrets at all.
   */
  syncHubTokens?: boolean;
  /** Default: switchyard-router-hf-tokens in the router ConfigMap's namespace. */
  routerHfTokensSecret?: { namespace: string; name: string };
  /**
   * The operator's own Deployment (--owner-deployment; the chart sets it): the router ConfigMap and the router's
   * Secret of Hub tokens, when in its namespace, get an owner reference to it, so that deleting it (`helm uninstall`)
   * has the garbage collector delete them too. Unset: they have no owner and outlive the operator.
   */
  ownerDeployment?: { namespace: string; name: string };
  /**
   * Worker pod defaults for every pool (--worker-image-pull-secret, --worker-pod-label; the chart's imagePullSecrets
   * and commonLabels): pull secrets where a pool sets none, labels under a pool's own podLabels.
   */
  workerDefaults?: WorkerPodDefaults;
  concurrency?: number;
  resyncMs?: number;
  /** Delay before the router config is rebuilt after a change, so bursts collapse into one write. */
  routerDebounceMs?: number;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** Messages below this level are dropped (--log-level; default info). */
  logLevel?: LogLevel;
  /** Where the messages at logLevel and above go; default: a line each, `<time> <level> <message>`, warn and error on stderr. */
  log?: (message: string, level: LogLevel) => void;
  defaultMetrics?: boolean;
  /** Called after leadership is lost and controllers stopped; default: exit(1) so the pod restarts as a standby. */
  onLostLeadership?: () => void;
}

const ROUTER_KEY = "router";

export class Manager {
  readonly kube: Kube;
  readonly metrics: OperatorMetrics;
  readonly identity: string;
  private readonly informers: Informer<never>[] = [];
  private readonly controllers: Controller[] = [];
  private readonly servers: Server[] = [];
  /** The ports the metrics and health servers listen on once started (the options' ports, or the OS's pick for 0). */
  readonly ports: { metrics?: number; health?: number } = {};
  private leader: LeaderElector | undefined;
  private leading = false;
  private started = false;
  private readonly log: Logger;
  readonly pools: Informer<ExpertPool>;
  readonly policies: Informer<RoutingPolicy>;
  /** The objects its own writes returned, while the caches trail them (runtime/recent.ts). */
  readonly recent: RecentWrites;
  private readonly poolCtl: Controller;
  private readonly policyCtl: Controller;
  private readonly routerCtl: Controller;

  constructor(private readonly o: ManagerOptions) {
    const sink = o.log;
    this.log = createLogger(o.logLevel ?? "info", sink ? (level, m) => sink(m, level) : writeLine);
    this.identity = o.identity ?? `${hostname()}_${process.pid}`;
    this.kube = new Kube(o.kubeConfig);
    this.metrics = new OperatorMetrics(o.defaultMetrics ?? true);
    this.kube.onRequest((r) => {
      const host = new URL(this.kube.server).host;
      const method = {
        get: "GET",
        list: "GET",
        watch: "GET",
        create: "POST",
        update: "PUT",
        patch: "PATCH",
        apply: "PATCH",
        delete: "DELETE",
      }[r.verb];
      this.metrics.restRequests.inc({ code: String(r.code), method, host });
    });
    const ns = o.namespace;
    const recent = new RecentWrites();
    this.recent = recent;
    const events = new EventRecorder(this.kube, "switchyard-operator", this.identity, this.log.warn);
    const router = o.routerConfigMap ?? { namespace: ns ?? "default", name: "switchyard-router" };
    const concurrency = o.concurrency ?? 16;
    const owner = this.ownerOf(o.ownerDeployment);
    const hubTokens = o.syncHubTokens
      ? new HubTokenSync({
          kube: this.kube,
          events,
          router: o.routerHfTokensSecret ?? { namespace: router.namespace, name: "switchyard-router-hf-tokens" },
          owner,
        })
      : undefined;

    const poolKey = (obj: { metadata?: { namespace?: string; name?: string } }) =>
      `${obj.metadata?.namespace ?? "default"}/${obj.metadata?.name}`;
    const enqueueRouter = () => this.routerCtl.queue.addAfter(ROUTER_KEY, o.routerDebounceMs ?? 5000);
    // A standby keeps its caches warm but queues nothing: its queues would only fill (and its workqueue metrics
    // count work no one does). startControllers enqueues every cached object when it takes the lead.
    const managed = `${MANAGED_BY_LABEL}=${MANAGED_BY}`;
    const mk = <T extends { metadata?: object }>(
      name: string,
      path: string,
      onEvent: (ev: InformerEvent, obj: T) => void,
      labelSelector?: string,
      fieldSelector?: string,
    ) => {
      const inf = new Informer<T>(this.kube, {
        name,
        path,
        labelSelector,
        fieldSelector,
        onEvent,
        log: this.log.warn,
        resyncMs: o.resyncMs ?? 10 * 60_000,
      });
      this.informers.push(inf as unknown as Informer<never>);
      return inf;
    };
    // A child's event maps back to its pool through the pool label (set on every child we create).
    const toPool = (ev: InformerEvent, obj: { metadata?: { namespace?: string; labels?: Record<string, string> } }) => {
      const pool = obj.metadata?.labels?.[POOL_LABEL];
      if (!pool || !this.leading) return;
      const key = `${obj.metadata?.namespace ?? "default"}/${pool}`;
      // Children change in bursts (a pod's phase, then its readiness); a short delay folds them into one pass.
      if (ev === "resync") return;
      this.poolCtl.queue.addAfter(key, 100);
    };

    // The policies pointing at one pool: their status depends on each other (which one the router uses), the pool
    // and its published plan (whether the router serves it at all).
    const enqueuePolicies = (namespace: string | undefined, pool: string) => {
      for (const k of policyKeysForPool(this.policies.list(namespace), namespace ?? "default", pool))
        this.policyCtl.queue.add(k);
    };
    this.pools = mk<ExpertPool>("expertpools", paths.expertPools(ns), (ev, p) => {
      // Our last status write of a pool gone is no longer news (and would sit there until the next write of that name).
      if (ev === "delete") recent.forget("ExpertPool", p.metadata.namespace ?? "default", p.metadata.name);
      if (!this.leading) return;
      this.poolCtl.queue.add(poolKey(p));
      // Policies for this pool resolve against it (topK vs experts), and the router config lists pools.
      enqueuePolicies(p.metadata.namespace, p.metadata.name);
      // Secrets are not watched: with the token sync on, the pools' periodic resync (resyncMs) also runs a router
      // pass (the debounce folds the whole resync into one), so a rotated token reaches the router's Secret by then.
      if (ev !== "resync" || hubTokens) enqueueRouter();
    });
    this.policies = mk<RoutingPolicy>("routingpolicies", paths.routingPolicies(ns), (ev, rp) => {
      // Else for 30 s the policy reconciler would take our last status write for a policy still there.
      if (ev === "delete") recent.forget("RoutingPolicy", rp.metadata.namespace ?? "default", rp.metadata.name);
      if (!this.leading) return;
      this.policyCtl.queue.add(poolKey(rp));
      if (ev === "resync") return;
      // Adding or deleting one changes which of its pool's policies wins (poolRef is immutable: no old pool).
      enqueuePolicies(rp.metadata.namespace, rp.spec.poolRef.name);
      enqueueRouter();
    });
    // A delete outdates our last write of the object: RecentWrites would otherwise answer with that write for its
    // 30 s, so the reconcile the delete triggers would see nothing to recreate (until the 10-minute resync).
    const forgetOnDelete =
      (kind: string) => (ev: InformerEvent, obj: { metadata?: { namespace?: string; name?: string } }) => {
        if (ev === "delete") recent.forget(kind, obj.metadata?.namespace ?? "default", obj.metadata?.name ?? "");
      };
    const stsDeleted = forgetOnDelete("StatefulSet");
    const svcDeleted = forgetOnDelete("Service");
    const cmDeleted = forgetOnDelete("ConfigMap");
    const isRouterConfigMap = (cm: V1ConfigMap) =>
      cm.metadata?.namespace === router.namespace && cm.metadata?.name === router.name;
    const statefulSets = mk<V1StatefulSet>(
      "statefulsets",
      paths.statefulSets(ns),
      (ev, o) => {
        stsDeleted(ev, o);
        toPool(ev, o);
      },
      managed,
    );
    const services = mk<V1Service>(
      "services",
      paths.services(ns),
      (ev, o) => {
        svcDeleted(ev, o);
        toPool(ev, o);
      },
      managed,
    );
    const configMaps = mk<V1ConfigMap>(
      "configmaps",
      paths.configMaps(ns),
      (ev, cm) => {
        cmDeleted(ev, cm);
        toPool(ev, cm);
        const pool = cm.metadata?.labels?.[POOL_LABEL];
        if (this.leading && ev !== "resync" && (pool || isRouterConfigMap(cm))) enqueueRouter();
        // A plan appearing (or going) decides whether the router serves the pool: its policies' PoolNotServed.
        if (this.leading && ev !== "resync" && pool && cm.metadata?.name === planConfigMapName(pool))
          enqueuePolicies(cm.metadata?.namespace, pool);
      },
      managed,
    );
    // The router ConfigMap outside the watched namespace (the chart's release namespace with watchNamespace set):
    // a cache of that one ConfigMap, so a pass compares against it (quiet after convergence) and an edit or a
    // delete of it is repaired at once. Inside: the ConfigMap cache above holds it (one cache, one event each).
    const routerConfigMaps =
      ns !== undefined && ns !== router.namespace
        ? mk<V1ConfigMap>(
            "router-configmap",
            paths.configMaps(router.namespace),
            (ev, cm) => {
              cmDeleted(ev, cm);
              if (this.leading && ev !== "resync") enqueueRouter();
            },
            undefined,
            `metadata.name=${router.name}`,
          )
        : configMaps;
    const pods = mk<V1Pod>("pods", paths.pods(ns), toPool, `${COMPONENT_LABEL}=${WORKER_COMPONENT}`);
    // The StatefulSet controller's Warning FailedCreate events: its only word on pods the API server refused
    // (Pod Security, ResourceQuota, a missing PriorityClass, webhooks), which pool status reports as
    // Degraded/PodCreateFailed. Only those (field selector): a cluster's events are many. An event has no pool
    // label: it maps to its pool through the StatefulSet it is about.
    const stsEvents = mk<EventLike & { metadata?: { name?: string; namespace?: string } }>(
      "statefulset-events",
      ns ? paths.events(ns) : "/api/v1/events",
      (ev, e) => {
        if (ev === "delete") return;
        const sts = statefulSets.get(e.metadata?.namespace ?? "default", e.involvedObject?.name ?? "");
        if (sts) toPool(ev, sts);
      },
      undefined,
      "involvedObject.kind=StatefulSet,reason=FailedCreate,type=Warning",
    );

    const poolRec = new PoolReconciler({
      kube: this.kube,
      routerNamespace: router.namespace,
      workerDefaults: o.workerDefaults,
      caches: { pools: this.pools, statefulSets, services, configMaps, pods, events: stsEvents },
      recent,
      events,
      log: this.log.warn,
      // a heat query answered in the background (observeHeat) queues its pool, whose next pass replans with it
      enqueue: (key: string) => this.poolCtl.queue.add(key),
    });
    const fit = new RouterConfigFit();
    const deps = {
      kube: this.kube,
      pools: this.pools,
      policies: this.policies,
      configMaps,
      routerConfigMaps,
      recent,
      events,
      router,
      fit,
      hubTokens,
      owner,
      log: this.log.warn,
      // A pool that lost (or got back) its place in the router config: its policies' Ready says so.
      onServedChanged: (keys: string[]) => {
        for (const k of keys) {
          const [namespace, pool] = splitKey(k);
          enqueuePolicies(namespace, pool);
        }
      },
    };
    this.metrics.routerConfig = () => ({ bytes: fit.bytes, served: fit.served, leftOut: [...fit.leftOut.keys()] });
    const policyRec = new PolicyReconciler(deps);
    const routerRec = new RouterConfigReconciler(deps);
    this.poolCtl = new Controller("expertpool", (k) => poolRec.reconcile(k), this.metrics, concurrency, this.log);
    this.policyCtl = new Controller(
      "routingpolicy",
      (k) => policyRec.reconcile(k),
      this.metrics,
      concurrency,
      this.log,
    );
    this.routerCtl = new Controller("routerconfig", () => routerRec.reconcile(), this.metrics, 1, this.log);
    this.controllers.push(this.poolCtl, this.policyCtl, this.routerCtl);

    // Each pool's Ready condition, from the cache at scrape time.
    this.metrics.poolStates = () => this.pools.list().map(poolReadiness);
  }

  /**
   * The owner reference of the operator's own Deployment for objects it makes in `namespace` (owner references do
   * not cross namespaces: the garbage collector would take one to another namespace's object for a missing owner and
   * delete the dependent), or undefined (none configured, another namespace, or not read yet). Its uid is read once
   * (GET, needs get on that Deployment); a failed read is logged once and tried again at the next call.
   */
  private ownerOf(d: { namespace: string; name: string } | undefined) {
    let ref: { apiVersion: string; kind: string; name: string; uid: string } | undefined;
    let said = false;
    return async (namespace: string) => {
      if (!d || d.namespace !== namespace) return undefined;
      if (ref) return ref;
      try {
        const got = await this.kube.get<KubeObject>(`/apis/apps/v1/namespaces/${d.namespace}/deployments/${d.name}`);
        const uid = got?.metadata?.uid;
        if (!uid) throw new Error("not found");
        ref = { apiVersion: "apps/v1", kind: "Deployment", name: d.name, uid };
      } catch (e) {
        if (!said) {
          said = true;
          this.log.warn(
            `owner Deployment ${d.namespace}/${d.name}: ${(e as Error).message}; the router ConfigMap and Hub-token Secret get no owner reference until it can be read`,
          );
        }
      }
      return ref;
    };
  }

  /** Whether every cache has listed once. */
  synced(): boolean {
    return this.informers.every((i) => i.hasSynced());
  }

  isLeader(): boolean {
    return this.leading;
  }

  async start(): Promise<void> {
    this.started = true;
    await this.serveHttp();
    await Promise.all(this.informers.map((i) => i.start()));
    await Promise.all(this.informers.map((i) => i.waitSynced()));
    this.log.info(`caches synced (${this.informers.map((i) => i.name).join(", ")})`);
    if (this.o.leaderElect) {
      this.metrics.leader.set({ name: this.o.leaseName ?? "switchyard-operator" }, 0);
      this.leader = new LeaderElector(this.kube, {
        namespace: this.o.leaseNamespace ?? this.o.namespace ?? "default",
        name: this.o.leaseName ?? "switchyard-operator",
        identity: this.identity,
        leaseDurationMs: this.o.leaseDurationMs,
        renewDeadlineMs: this.o.renewDeadlineMs,
        retryPeriodMs: this.o.retryPeriodMs,
        log: this.log,
        onStartedLeading: () => {
          this.metrics.leader.set({ name: this.o.leaseName ?? "switchyard-operator" }, 1);
          this.startControllers();
        },
        onStoppedLeading: () => {
          // Like controller-runtime: a replica that lost its lease exits, and its restart rejoins as a standby.
          this.metrics.leader.set({ name: this.o.leaseName ?? "switchyard-operator" }, 0);
          this.log.warn("lost leadership; stopping controllers");
          const done = this.o.onLostLeadership ?? (() => process.exit(1));
          void Promise.all(this.controllers.map((c) => c.stop(5_000))).then(done);
        },
      });
      this.leader.start();
    } else {
      this.startControllers();
    }
  }

  private startControllers(): void {
    if (this.leading) return;
    this.leading = true;
    for (const c of this.controllers) c.start();
    // Level-triggered start: every known object gets one pass.
    for (const p of this.pools.list()) this.poolCtl.queue.add(`${p.metadata.namespace}/${p.metadata.name}`);
    for (const rp of this.policies.list()) this.policyCtl.queue.add(`${rp.metadata.namespace}/${rp.metadata.name}`);
    this.routerCtl.queue.add(ROUTER_KEY);
    this.log.info(`controllers started (${this.identity})`);
  }

  /** True when nothing is queued or running in any controller. */
  idle(): boolean {
    return this.controllers.every((c) => c.queue.isIdle());
  }

  private async serveHttp(): Promise<void> {
    const listen = (app: express.Express, port: number) =>
      new Promise<number>((resolve, reject) => {
        const s = app.listen(port, () => {
          const a = s.address();
          resolve(typeof a === "object" && a ? a.port : port);
        });
        s.on("error", reject);
        this.servers.push(s);
      });
    const health = (app: express.Express) => {
      app.get("/healthz", (_q, r) => {
        r.type("text/plain").send("ok");
      });
      app.get("/readyz", (_q, r) => {
        const ok = this.started && this.synced();
        r.status(ok ? 200 : 503)
          .type("text/plain")
          .send(ok ? "ok" : "caches not synced");
      });
    };
    const metricsApp = express();
    metricsApp.get("/metrics", async (_q, r) => {
      r.type(this.metrics.registry.contentType).send(await this.metrics.registry.metrics());
    });
    health(metricsApp);
    if (this.o.metricsPort !== undefined) this.ports.metrics = await listen(metricsApp, this.o.metricsPort);
    // one server when both name the same port; port 0 asks for two (any free ports)
    if (this.o.healthPort !== undefined && (this.o.healthPort !== this.o.metricsPort || this.o.healthPort === 0)) {
      const h = express();
      health(h);
      this.ports.health = await listen(h, this.o.healthPort);
    } else if (this.o.healthPort !== undefined) this.ports.health = this.ports.metrics;
  }

  /** Graceful shutdown: stop taking work, let reconciles in flight finish, release the Lease, close watches. */
  async stop(timeoutMs = 10_000): Promise<void> {
    await Promise.all(this.controllers.map((c) => c.stop(timeoutMs)));
    await this.leader?.stop();
    await Promise.all(this.informers.map((i) => i.stop()));
    await Promise.all(this.servers.map((s) => new Promise((r) => s.close(() => r(undefined)))));
    this.servers.length = 0;
  }
}
