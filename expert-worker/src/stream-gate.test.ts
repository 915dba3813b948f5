// StreamGate on its own: when a RunExpertsStream call stops being read and when it reads again.

import { describe, expect, it } from "vitest";
import { StreamGate } from "./stream-gate.js";

function gate(limits = { maxInFlight: 4, maxQueuedBytes: 100 }) {
  const calls: string[] = [];
  const g = new StreamGate({ pause: () => calls.push("pause"), resume: () => calls.push("resume") }, limits);
  return { g, calls };
}

describe("StreamGate", () => {
  it("pauses while more result bytes wait than the limit, resumes once they are taken", () => {
    const { g, calls } = gate();
    g.started();
    g.started();
    g.wrote(60, true);
    g.answered();
    expect(g.isPaused).toBe(false);
    g.wrote(60, true); // 120 > 100
    g.answered();
    expect(calls).toEqual(["pause"]);
    g.sent(60); // 60 left
    expect(calls).toEqual(["pause", "resume"]);
    expect(g.queuedBytes).toBe(60);
  });

  it("pauses when write() returns false and resumes on 'drain' only", () => {
    const { g, calls } = gate();
    g.started();
    g.wrote(1, false);
    g.answered();
    g.sent(1);
    expect(g.isPaused).toBe(true); // the bytes are taken, but grpc-js has not drained
    g.drained();
    expect(calls).toEqual(["pause", "resume"]);
  });

  it("pauses at the in-flight limit and resumes at half of it", () => {
    const { g, calls } = gate();
    for (let i = 0; i < 4; i++) g.started();
    expect(calls).toEqual(["pause"]);
    g.answered(); // 3 in flight
    expect(g.isPaused).toBe(true);
    g.answered(); // 2
    expect(calls).toEqual(["pause", "resume"]);
  });

  it("stays paused while any one limit holds", () => {
    const { g } = gate();
    g.started();
    g.wrote(200, false);
    g.drained(); // bytes still over
    expect(g.isPaused).toBe(true);
    g.wrote(0, false);
    g.sent(200); // bytes clear, drain pending
    expect(g.isPaused).toBe(true);
    g.drained();
    expect(g.isPaused).toBe(false);
  });
});
