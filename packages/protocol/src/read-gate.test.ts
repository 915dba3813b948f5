import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { ReadGate } from "./read-gate.js";

/** The parts of a socket the gate uses: writableLength, pause/resume and the drain event. */
function fakeSocket() {
  const s = Object.assign(new EventEmitter(), {
    writableLength: 0,
    reading: true,
    pause() {
      s.reading = false;
      return s;
    },
    resume() {
      s.reading = true;
      return s;
    },
  });
  return s;
}

describe("ReadGate", () => {
  it("stops reading at maxInFlight and reads again at half of it", () => {
    const s = fakeSocket();
    const g = new ReadGate(s as unknown as Socket, { maxInFlight: 4, maxQueuedBytes: 100 });
    for (let i = 0; i < 3; i++) g.started();
    expect(s.reading).toBe(true);
    g.started();
    expect([s.reading, g.isPaused, g.inFlight]).toEqual([false, true, 4]);
    g.answered();
    expect(s.reading).toBe(false); // 3 > 4 / 2
    g.answered();
    expect(s.reading).toBe(true);
  });

  it("stops reading while replies past maxQueuedBytes wait for the kernel, and reads again on drain", () => {
    const s = fakeSocket();
    const g = new ReadGate(s as unknown as Socket, { maxInFlight: 100, maxQueuedBytes: 100 });
    g.started();
    s.writableLength = 150;
    g.answered();
    expect(s.reading).toBe(false);
    s.writableLength = 0;
    s.emit("drain");
    expect(s.reading).toBe(true);
  });

  it("waits for both limits to clear", () => {
    const s = fakeSocket();
    const g = new ReadGate(s as unknown as Socket, { maxInFlight: 2, maxQueuedBytes: 100 });
    g.started();
    g.started();
    s.writableLength = 500;
    g.answered();
    g.answered();
    expect(s.reading).toBe(false); // nothing in flight, but the replies still queue
    s.writableLength = 0;
    s.emit("drain");
    expect(s.reading).toBe(true);
  });
});
