// A watched cache of one resource: client-node's ListWatch (list, then watch from the list's resourceVersion;
// relist on 410 Gone; reconnect after a server-side close), plus what it leaves to the caller: restart with
// exponential backoff after errors (it stops on any error but 410), a "synced" signal after the first list,
// a periodic resync for level-triggered safety, and request counting through our Kube client.
import { type KubernetesObject, ListWatch, Watch } from "@kubernetes/client-node";

// Objects come straight from JSON (timestamps stay strings), so no client-node model class is assumed.
type Obj = { metadata?: { name?: string; namespace?: string; resourceVersion?: string } };

import type { Kube } from "./kube.js";

export type InformerEvent = "add" | "update" | "delete" | "resync";

/**
 * managedFields are often half of an object's bytes and the operator never reads them (client-go's informers
 * drop them with a transform for the same reason).
 */
export function stripManagedFields<T>(obj: T): T {
  const meta = (obj as { metadata?: { managedFields?: unknown } } | undefined)?.metadata;
  if (meta && "managedFields" in meta) delete meta.managedFields;
  return obj;
}

class CountingWatch extends Watch {
  constructor(private readonly kube: Kube) {
    super(kube.kc);
  }
  override async watch(
    path: string,
    query: Record<string, string | number | boolean | undefined>,
    cb: (phase: string, obj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    // The server ends each watch after timeoutSeconds; a fresh one resumes from the last resourceVersion.
    // This bounds how long a half-open connection can leave the cache stale (client-node issue #364).
    const strip = (phase: string, obj: unknown, watchObj?: unknown) => cb(phase, stripManagedFields(obj), watchObj);
    // Watch.watch() does not throw: a refused request (403, 500...) or one that never connected reaches `done`
    // before it returns, with the status in err.statusCode (none: no response, recorded as 0 like Kube.request).
    let started = false;
    let failed: number | undefined;
    const onDone = (err: unknown) => {
      if (!started && err) {
        const code = (err as { statusCode?: unknown }).statusCode;
        failed = typeof code === "number" ? code : 0;
      }
      done(err);
    };
    const ctl = await super.watch(path, { ...query, allowWatchBookmarks: true, timeoutSeconds: 300 }, strip, onDone);
    started = true;
    this.kube.record("watch", path, failed ?? 200);
    return ctl;
  }
}

export interface InformerOptions<T> {
  name: string;
  path: string;
  labelSelector?: string;
  /** A cache of some objects only, e.g. `metadata.name=NAME` for one object of a namespace. */
  fieldSelector?: string;
  onEvent: (event: InformerEvent, obj: T) => void;
  log?: (msg: string) => void;
  resyncMs?: number;
  maxBackoffMs?: number;
}

export class Informer<T extends Obj> {
  private readonly lw: ListWatch<KubernetesObject>;
  private synced = false;
  private syncWaiters: (() => void)[] = [];
  private failures = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  readonly name: string;

  constructor(
    kube: Kube,
    private readonly o: InformerOptions<T>,
  ) {
    this.name = o.name;
    const list = async () => {
      const l = await kube.list<T>(o.path, { labelSelector: o.labelSelector, fieldSelector: o.fieldSelector });
      this.failures = 0;
      // ListWatch adds the items right after this promise resolves; mark synced once that has happened.
      setImmediate(() => this.markSynced());
      return { apiVersion: "v1", kind: "List", metadata: l.metadata ?? {}, items: l.items.map(stripManagedFields) };
    };
    this.lw = new ListWatch<KubernetesObject>(
      o.path,
      new CountingWatch(kube),
      list as never,
      false,
      o.labelSelector,
      o.fieldSelector,
    );
    this.lw.on("add", (obj) => this.emit("add", obj as T));
    this.lw.on("update", (obj) => this.emit("update", obj as T));
    this.lw.on("delete", (obj) => this.emit("delete", obj as T));
    this.lw.on("error", (err) => this.onError(err));
  }

  private emit(ev: InformerEvent, obj: T): void {
    this.failures = 0;
    this.o.onEvent(ev, obj);
  }

  private markSynced(): void {
    if (this.synced) return;
    this.synced = true;
    for (const w of this.syncWaiters) w();
    this.syncWaiters = [];
  }

  private onError(err: unknown): void {
    if (this.stopped) return;
    this.failures++;
    const max = this.o.maxBackoffMs ?? 30_000;
    const delay = Math.min(max, 500 * 2 ** Math.min(this.failures - 1, 10)) * (0.8 + Math.random() * 0.4);
    this.o.log?.(
      `informer ${this.name}: ${(err as Error)?.message ?? String(err)}; restarting in ${Math.round(delay)} ms`,
    );
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      if (!this.stopped) void this.lw.start().catch((e) => this.onError(e));
    }, delay);
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.lw.start().catch((e) => this.onError(e));
    if (this.o.resyncMs) {
      this.resyncTimer = setInterval(() => {
        for (const obj of this.lw.list()) this.o.onEvent("resync", obj as T);
      }, this.o.resyncMs);
      this.resyncTimer.unref();
    }
  }

  hasSynced(): boolean {
    return this.synced;
  }

  waitSynced(): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((r) => this.syncWaiters.push(r));
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.lw.get(name, namespace) as T | undefined;
  }

  list(namespace?: string): readonly T[] {
    return this.lw.list(namespace) as readonly T[];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    clearInterval(this.resyncTimer);
    await this.lw.stop();
  }
}
