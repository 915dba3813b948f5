// Kubernetes Events (core/v1) for notable transitions; best effort: a failed event never fails a reconcile.
import type { Kube } from "./kube.js";
import { paths } from "./kube.js";

export interface Involved {
  apiVersion: string;
  kind: string;
  name: string;
  namespace: string;
  uid?: string;
}

export class EventRecorder {
  constructor(
    private readonly kube: Kube,
    private readonly component: string,
    private readonly instance: string,
    private readonly log?: (m: string) => void,
  ) {}

  async emit(obj: Involved, type: "Normal" | "Warning", reason: string, message: string): Promise<void> {
    const now = new Date().toISOString();
    try {
      await this.kube.create(paths.events(obj.namespace), {
        apiVersion: "v1",
        kind: "Event",
        metadata: { generateName: `${obj.name}.`, namespace: obj.namespace },
        involvedObject: obj,
        reason,
        message: message.slice(0, 1024),
        type,
        source: { component: this.component },
        reportingComponent: this.component,
        reportingInstance: this.instance,
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      });
    } catch (e) {
      this.log?.(`event ${reason} for ${obj.kind} ${obj.namespace}/${obj.name}: ${(e as Error).message}`);
    }
  }
}
