// InFlightBatches: ExpertBatch.cancel reaches the named batch of its connection only, once, and not after its reply.

import { ExpertBatch, SwitchyardError } from "@switchyard/protocol";
import { describe, expect, it } from "vitest";
import { InFlightBatches, isCancelOnly } from "./batch-cancels.js";

const codeOf = (s: AbortSignal) => (s.reason instanceof SwitchyardError ? s.reason.code : String(s.reason));

describe("InFlightBatches", () => {
  it("aborts the named batch with CANCELLED, and no other", () => {
    const b = new InFlightBatches();
    const one = b.track(1n);
    const two = b.track(2n);
    expect(b.cancel([2n])).toBe(1);
    expect(two.signal.aborted).toBe(true);
    expect(codeOf(two.signal)).toBe("CANCELLED");
    expect(one.signal.aborted).toBe(false);
    expect(b.size).toBe(1);
  });

  it("ignores ids it does not hold: answered (released), never sent, or cancelled already", () => {
    const b = new InFlightBatches();
    const one = b.track(1n);
    one.release();
    expect(b.cancel([1n, 7n])).toBe(0);
    expect(one.signal.aborted).toBe(false);
    const two = b.track(2n);
    expect(b.cancel([2n, 2n])).toBe(1);
    expect(two.signal.aborted).toBe(true);
    expect(b.size).toBe(0);
  });

  it("a reused id: the cancel reaches the latest, and the earlier one's release does not drop it", () => {
    const b = new InFlightBatches();
    const first = b.track(5n);
    const second = b.track(5n);
    first.release();
    expect(b.cancel([5n])).toBe(1);
    expect(second.signal.aborted).toBe(true);
    expect(first.signal.aborted).toBe(false);
  });
});

describe("isCancelOnly", () => {
  it("is a message with cancel ids and neither tokens nor slices", () => {
    expect(isCancelOnly(ExpertBatch.fromPartial({ cancel: [1n] }))).toBe(true);
    expect(isCancelOnly(ExpertBatch.fromPartial({}))).toBe(false);
    expect(isCancelOnly(ExpertBatch.fromPartial({ cancel: [1n], slices: [{ expert: 0, offset: 0, count: 0 }] }))).toBe(
      false,
    );
  });
});
