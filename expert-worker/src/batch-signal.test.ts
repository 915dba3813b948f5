// batchSignal: ExpertBatch.timeout_ms as the batch's deadline, on top of the call's own signal; callSignal's gRPC
// deadline; both past setTimeout's 2^31-1 ms limit.

import { SwitchyardError } from "@switchyard/protocol";
import { afterEach, describe, expect, it, vi } from "vitest";
import { batchSignal, callSignal, MAX_TIMER_MS } from "./server.js";

const reasonCode = (s: AbortSignal) => (s.reason instanceof SwitchyardError ? s.reason.code : String(s.reason));

describe("batchSignal", () => {
  it("timeout 0 is no timeout: the call's signal itself", () => {
    const parent = new AbortController();
    const b = batchSignal(parent.signal, 0);
    expect(b.signal).toBe(parent.signal);
    b.dispose();
  });

  it("aborts with DEADLINE_EXCEEDED when timeout_ms passes", async () => {
    const parent = new AbortController();
    const t0 = performance.now();
    const b = batchSignal(parent.signal, 15);
    expect(b.signal.aborted).toBe(false);
    await new Promise<void>((r) => b.signal.addEventListener("abort", () => r(), { once: true }));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(14);
    expect(reasonCode(b.signal)).toBe("DEADLINE_EXCEEDED");
    expect(parent.signal.aborted).toBe(false); // one batch's timeout does not end the stream
    b.dispose();
  });

  it("follows the call's signal (client cancel) with its reason, before or after creation", () => {
    const parent = new AbortController();
    const b = batchSignal(parent.signal, 10_000);
    parent.abort(new Error("gone"));
    expect(b.signal.aborted).toBe(true);
    expect((b.signal.reason as Error).message).toBe("gone");
    b.dispose();
    const late = batchSignal(parent.signal, 10_000);
    expect(late.signal.aborted).toBe(true);
    late.dispose();
  });

  it("dispose stops the timer", async () => {
    const b = batchSignal(new AbortController().signal, 5);
    b.dispose();
    await new Promise((r) => setTimeout(r, 20));
    expect(b.signal.aborted).toBe(false);
  });
});

describe("timeouts past setTimeout's limit (2^31-1 ms, which Node fires after 1 ms)", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  const fakeCall = (deadline: Date) => ({ getDeadline: () => deadline, on() {}, removeListener() {} });

  it("timeout_ms 0xFFFFFFFF and a gRPC deadline 30 days out do not fire at once", async () => {
    const b = batchSignal(new AbortController().signal, 0xffffffff);
    const c = callSignal(fakeCall(new Date(Date.now() + 30 * 24 * 3600 * 1000)));
    await new Promise((r) => setTimeout(r, 20));
    expect(b.signal.aborted).toBe(false);
    expect(c.signal.aborted).toBe(false);
    b.dispose();
    c.dispose();
  });

  it("they fire when due, after re-arming, and dispose stops them", () => {
    vi.useFakeTimers();
    const ms = MAX_TIMER_MS * 2 + 5;
    const b = batchSignal(new AbortController().signal, ms);
    const c = callSignal(fakeCall(new Date(Date.now() + ms)));
    const d = batchSignal(new AbortController().signal, ms);
    d.dispose();
    vi.advanceTimersByTime(ms - 1);
    expect(b.signal.aborted).toBe(false);
    expect(c.signal.aborted).toBe(false);
    vi.advanceTimersByTime(1);
    expect(reasonCode(b.signal)).toBe("DEADLINE_EXCEEDED");
    expect(reasonCode(c.signal)).toBe("DEADLINE_EXCEEDED");
    expect(d.signal.aborted).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
    b.dispose();
    c.dispose();
  });
});
