// Leader election against an in-memory Lease store behind a fake API server that enforces optimistic
// concurrency (a PUT with a stale resourceVersion gets 409), as the real one does.
import { createServer, type Server } from "node:http";
import type { KubeConfig } from "@kubernetes/client-node";
import { afterEach, describe, expect, it } from "vitest";
import { Kube } from "./kube.js";
import { LeaderElector } from "./leader.js";
import { kubeConfigFor, until } from "./testing.js";

interface Lease {
  metadata: { name: string; namespace: string; resourceVersion: string };
  spec: { holderIdentity?: string; renewTime?: string; leaseDurationSeconds?: number; leaseTransitions?: number };
}

let server: Server | undefined;
let lease: Lease | undefined;
let rv = 0;
/** PUTs are answered this late (checked against the lease when answered, as a slow API server would). */
let putDelayMs = 0;
let putsInFlight = 0;

afterEach(async () => {
  const s = server;
  server = undefined;
  lease = undefined;
  putDelayMs = 0;
  if (s) {
    const closed = new Promise((r) => s.close(r));
    s.closeAllConnections();
    await closed;
  }
});

async function fakeLeaseApi(): Promise<KubeConfig> {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => {
      body += d;
    });
    req.on("end", () => {
      res.setHeader("content-type", "application/json");
      const send = (code: number, obj: unknown) => {
        res.statusCode = code;
        res.end(JSON.stringify(obj));
      };
      if (req.method === "GET")
        return lease ? send(200, lease) : send(404, { kind: "Status", code: 404, reason: "NotFound" });
      const obj = JSON.parse(body) as Lease;
      if (req.method === "POST") {
        if (lease) return send(409, { kind: "Status", code: 409, reason: "AlreadyExists" });
        lease = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++rv) } };
        return send(201, lease);
      }
      if (req.method === "PUT") {
        const answer = () => {
          if (!lease || obj.metadata.resourceVersion !== lease.metadata.resourceVersion)
            return send(409, { kind: "Status", code: 409, reason: "Conflict" });
          lease = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++rv) } };
          return send(200, lease);
        };
        if (!putDelayMs) return answer();
        putsInFlight++;
        setTimeout(() => {
          putsInFlight--;
          answer();
        }, putDelayMs);
        return;
      }
      send(405, {});
    });
  });
  return kubeConfigFor(server);
}

function candidate(
  kc: KubeConfig,
  identity: string,
  events: string[],
  timing = { leaseDurationMs: 1000, renewDeadlineMs: 700 },
) {
  return new LeaderElector(new Kube(kc), {
    namespace: "ops",
    name: "op",
    identity,
    ...timing,
    retryPeriodMs: 100,
    onStartedLeading: () => events.push(`${identity} leads`),
    onStoppedLeading: () => events.push(`${identity} stopped`),
  });
}

/** Another holder's renewal as its own clock, `skewMs` off ours, stamps it. */
function renewAs(holder: string, skewMs: number, leaseDurationSeconds = 1) {
  lease = {
    metadata: { name: "op", namespace: "ops", resourceVersion: String(++rv) },
    spec: {
      ...lease?.spec,
      holderIdentity: holder,
      renewTime: new Date(Date.now() + skewMs).toISOString(),
      leaseDurationSeconds,
    },
  };
}

/** Candidate "a" on a fresh fake API server, started and leading. */
async function leadingA() {
  const kc = await fakeLeaseApi();
  const events: string[] = [];
  const a = candidate(kc, "a", events);
  a.start();
  await until(() => a.isLeader());
  return { kc, a, events };
}

describe("LeaderElector", () => {
  it("one of two candidates leads; the other waits; release hands over at once", async () => {
    const { kc, a, events } = await leadingA();
    const b = candidate(kc, "b", events);
    b.start();
    await new Promise((r) => setTimeout(r, 400)); // several retry periods
    expect(b.isLeader()).toBe(false);
    expect(lease?.spec.holderIdentity).toBe("a");
    const t0 = Date.now();
    await a.stop(); // releases the lease
    await until(() => b.isLeader());
    expect(Date.now() - t0).toBeLessThan(800); // well before the 1 s lease would have expired
    expect(lease?.spec.leaseTransitions).toBe(1);
    expect(events).toEqual(["a leads", "b leads"]);
    await b.stop();
  });

  it("stop() while a renewal is out: no second start, and the lease is released after that renewal lands", async () => {
    const { a, events } = await leadingA();
    putDelayMs = 300;
    await until(() => putsInFlight > 0); // a renewal is out
    await a.stop();
    expect(a.isLeader()).toBe(false);
    expect(lease?.spec.holderIdentity).toBe(""); // released: a release sent before the renewal landed would 409
    await new Promise((r) => setTimeout(r, 400)); // several retry periods: no round after stop()
    expect(a.isLeader()).toBe(false);
    expect(events).toEqual(["a leads"]);
    expect(lease?.spec.holderIdentity).toBe("");
  });

  it("takes over an expired lease of a holder that stopped renewing", async () => {
    const kc = await fakeLeaseApi();
    lease = {
      metadata: { name: "op", namespace: "ops", resourceVersion: String(++rv) },
      spec: { holderIdentity: "ghost", renewTime: new Date(Date.now()).toISOString(), leaseDurationSeconds: 1 },
    };
    const events: string[] = [];
    const b = candidate(kc, "b", events);
    const t0 = Date.now();
    b.start();
    await until(() => b.isLeader(), 5000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(lease?.spec.holderIdentity).toBe("b");
    await b.stop();
  });

  it("a leader whose renewals fail past the deadline stops leading", async () => {
    const { a, events } = await leadingA();
    // Someone else grabs the lease behind our back (our cached resourceVersion is now stale: 409s).
    lease = {
      ...(lease as Lease),
      metadata: { ...(lease as Lease).metadata, resourceVersion: String(++rv) },
      spec: {
        ...(lease as Lease).spec,
        holderIdentity: "thief",
        renewTime: new Date().toISOString(),
        leaseDurationSeconds: 60,
      },
    };
    await until(() => !a.isLeader(), 3000);
    expect(events).toEqual(["a leads", "a stopped"]);
    await a.stop();
  });

  it("takes over a dead holder's lease whose clock ran ahead of ours (expiry is judged by our own clock)", async () => {
    const kc = await fakeLeaseApi();
    renewAs("ghost", 3_600_000); // its last renewal, stamped an hour ahead; it never renews again
    const events: string[] = [];
    const b = candidate(kc, "b", events);
    b.start();
    await until(() => b.isLeader(), 3000);
    expect(lease?.spec.holderIdentity).toBe("b");
    await b.stop();
  });

  it("leaves a live holder's lease alone although its clock runs behind ours", async () => {
    const kc = await fakeLeaseApi();
    renewAs("live", -3_600_000);
    const renewing = setInterval(() => renewAs("live", -3_600_000), 100);
    try {
      const events: string[] = [];
      const b = candidate(kc, "b", events);
      b.start();
      await new Promise((r) => setTimeout(r, 600)); // several retry periods
      expect(events).toEqual([]);
      expect(lease?.spec.holderIdentity).toBe("live");
      await b.stop();
    } finally {
      clearInterval(renewing);
    }
  });

  it("a renewal that hangs past the renew deadline ends the leadership at the deadline", async () => {
    const { a, events } = await leadingA();
    putDelayMs = 3000; // the API server stops answering; the renewal would land long after the lease expired
    await until(() => putsInFlight > 0);
    await until(() => !a.isLeader(), 1500);
    expect(events).toEqual(["a leads", "a stopped"]);
    await a.stop();
  });

  it("a leader that reads the lease held by another stops leading at once, not at the renew deadline", async () => {
    const kc = await fakeLeaseApi();
    const events: string[] = [];
    const a = candidate(kc, "a", events, { leaseDurationMs: 10_000, renewDeadlineMs: 8000 });
    a.start();
    await until(() => a.isLeader());
    renewAs("thief", 0, 60); // taken behind our back: our next renewal 409s, the read after it shows the thief
    await until(() => !a.isLeader(), 2000);
    expect(events).toEqual(["a leads", "a stopped"]);
    await a.stop();
  });
});
