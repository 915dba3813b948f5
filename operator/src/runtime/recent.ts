// The informer cache trails our own writes by one watch event. Remembering the object each write returned,
// and preferring it while the cache still holds an older resourceVersion, stops the next reconcile (often
// triggered by that very write) from seeing stale state and writing the same thing again.
import type { KubeObject } from "./kube.js";

const rv = (o: KubeObject | undefined) => Number(o?.metadata?.resourceVersion ?? 0);

export class RecentWrites {
  private map = new Map<string, { obj: KubeObject; at: number }>();

  constructor(private readonly ttlMs = 30_000) {}

  put(kind: string, ns: string, name: string, obj: KubeObject): void {
    this.map.set(`${kind}/${ns}/${name}`, { obj, at: Date.now() });
  }

  forget(kind: string, ns: string, name: string): void {
    this.map.delete(`${kind}/${ns}/${name}`);
  }

  /** The newer of the cached object and our last write of it. */
  pick<T extends KubeObject>(kind: string, ns: string, name: string, cached: T | undefined): T | undefined {
    const key = `${kind}/${ns}/${name}`;
    const r = this.map.get(key);
    if (!r) return cached;
    if (cached && rv(cached) >= rv(r.obj)) {
      this.map.delete(key); // the cache has caught up
      return cached;
    }
    if (!cached && Date.now() - r.at > this.ttlMs) {
      this.map.delete(key); // deleted since, or never seen: trust the cache
      return undefined;
    }
    return r.obj as T;
  }
}
