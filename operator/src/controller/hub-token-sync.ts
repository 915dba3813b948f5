// The I/O of the Hub token sync (hub-tokens.ts; on only with --sync-hub-tokens): run at the end of every router
// config pass, it reads each hf:// pool's checkpoint.tokenSecret and server-side-applies the router's Secret so that
// it holds exactly the keys of the pools whose token it could read. Secrets are not watched (a cache of every Secret
// in the watched namespaces would hold far more than the few it needs): each pass GETs the ones it needs, so a
// rotated token reaches the router Secret at the next pass (a pool event, or the pools' periodic resync, which
// triggers a router pass while this is on). Token values are never logged or put in an event: errors of the
// requests that carry them are re-made from their status code and reason alone.
import type { V1Secret } from "@kubernetes/client-node";
import type { ExpertPool } from "../api/v1alpha1.js";
import type { EventRecorder } from "../runtime/events.js";
import { type Kube, KubeError, paths } from "../runtime/kube.js";
import {
  forbidden,
  newProblems,
  type Owner,
  ownsRouterSecret,
  type RouterSecretRef,
  routerSecretApply,
  routerSecretNeedsApply,
  type TokenProblem,
  type TokenSource,
  tokenFromSecret,
  tokenSources,
} from "./hub-tokens.js";
import { FIELD_MANAGER } from "./names.js";

/** Secrets read at once; a pass with hundreds of pools does not open hundreds of requests. */
const PARALLEL_READS = 8;

export interface HubTokenSyncDeps {
  kube: Kube;
  events: EventRecorder;
  /** The router's Secret (--router-hf-tokens-secret; the chart's router.hfTokensSecret). */
  router: RouterSecretRef;
  /** The operator's Deployment as owner for what it makes in a namespace (manager.ts ownerOf), if any. */
  owner?: (namespace: string) => Promise<Owner | undefined>;
}

export interface HubTokenSyncResult {
  /** The router keys the Secret holds now (sorted). */
  keys: string[];
  problems: Map<string, TokenProblem>;
  applied: boolean;
}

/** A KubeError without the server's message, for requests whose body or answer holds a token. */
function bare(e: unknown, what: string): unknown {
  return e instanceof KubeError ? new KubeError(e.code, e.reason, `${what}: ${e.code} ${e.reason}`) : e;
}

export class HubTokenSync {
  /** Pool ("namespace/pool") -> the message of the problem last reported for it, while it lasts. */
  private reported = new Map<string, string>();

  constructor(private readonly d: HubTokenSyncDeps) {}

  async sync(pools: readonly ExpertPool[]): Promise<HubTokenSyncResult> {
    const { kube, router } = this.d;
    const sources = tokenSources(pools);
    // One read per Secret, however many pools share it (a namespace's one "hf" Secret).
    const reads = new Map<string, Promise<V1Secret | undefined | "forbidden">>();
    const read = (s: TokenSource) => {
      const id = `${s.namespace}/${s.secret}`;
      let r = reads.get(id);
      if (!r) {
        r = kube.get<V1Secret>(`${paths.secrets(s.namespace)}/${s.secret}`).catch((e) => {
          if (e instanceof KubeError && e.code === 403) return "forbidden" as const;
          throw bare(e, `GET Secret ${id}`);
        });
        reads.set(id, r);
      }
      return r;
    };
    const tokens = new Map<string, string>();
    const problems = new Map<string, TokenProblem>();
    for (let i = 0; i < sources.length; i += PARALLEL_READS) {
      const batch = sources.slice(i, i + PARALLEL_READS);
      const got = await Promise.all(batch.map(read));
      batch.forEach((s, j) => {
        const secret = got[j];
        const r = secret === "forbidden" ? { problem: forbidden(s, router) } : tokenFromSecret(s, secret, router);
        if ("value" in r) tokens.set(s.routerKey, r.value);
        else problems.set(s.pool, r.problem);
      });
    }
    this.report(pools, problems);

    const path = `${paths.secrets(router.namespace)}/${router.name}`;
    let live: V1Secret | undefined;
    try {
      live = await kube.get<V1Secret>(path);
    } catch (e) {
      throw bare(e, `GET Secret ${router.namespace}/${router.name}`);
    }
    const deployment = await this.d.owner?.(router.namespace);
    const owner = deployment && ownsRouterSecret(live as never, FIELD_MANAGER, deployment) ? deployment : undefined;
    const applied = routerSecretNeedsApply(tokens, live as never, FIELD_MANAGER, owner);
    if (applied) {
      try {
        await kube.apply(path, routerSecretApply(router, tokens, owner), FIELD_MANAGER);
      } catch (e) {
        throw bare(e, `apply Secret ${router.namespace}/${router.name}`);
      }
    }
    return { keys: [...tokens.keys()].sort(), problems, applied };
  }

  /** A Warning Event on each pool with a new problem; the memory of what was said follows the problems of now. */
  private report(pools: readonly ExpertPool[], problems: Map<string, TokenProblem>) {
    for (const [key, p] of newProblems(this.reported, problems)) {
      const pool = pools.find((x) => `${x.metadata.namespace ?? "default"}/${x.metadata.name}` === key);
      if (!pool) continue;
      const involved = {
        apiVersion: pool.apiVersion,
        kind: pool.kind,
        name: pool.metadata.name,
        namespace: pool.metadata.namespace ?? "default",
        uid: pool.metadata.uid,
      };
      void this.d.events.emit(involved, "Warning", p.reason, p.message);
    }
    this.reported = new Map([...problems].map(([k, p]) => [k, p.message]));
  }
}
