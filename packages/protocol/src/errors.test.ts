import { Metadata, status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  cancelled,
  deadlineExceeded,
  ERROR_CODES,
  type ErrorCode,
  errorCodeOf,
  failedPrecondition,
  fromGrpcError,
  fromRpcError,
  internal,
  invalidArgument,
  isRetryable,
  notFound,
  resourceExhausted,
  SwitchyardError,
  throwIfAborted,
  toGrpcStatus,
  toRpcError,
  unavailable,
} from "./errors.js";

describe("SwitchyardError", () => {
  it("helpers set code, field and a message that names the field", () => {
    const e = invalidArgument("hidden.shape[1]", "expected 4096, got 4095");
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe("INVALID_ARGUMENT");
    expect(e.field).toBe("hidden.shape[1]");
    expect(e.message).toBe("hidden.shape[1]: expected 4096, got 4095");
    expect(notFound("no such pool", "pool").message).toBe("pool: no such pool");
    expect(failedPrecondition("not ready").field).toBeUndefined();
    const cases: [SwitchyardError, ErrorCode, status][] = [
      [invalidArgument("f", "x"), "INVALID_ARGUMENT", status.INVALID_ARGUMENT],
      [notFound("x"), "NOT_FOUND", status.NOT_FOUND],
      [resourceExhausted("queue full"), "RESOURCE_EXHAUSTED", status.RESOURCE_EXHAUSTED],
      [unavailable("down"), "UNAVAILABLE", status.UNAVAILABLE],
      [deadlineExceeded(), "DEADLINE_EXCEEDED", status.DEADLINE_EXCEEDED],
      [cancelled(), "CANCELLED", status.CANCELLED],
      [failedPrecondition("x"), "FAILED_PRECONDITION", status.FAILED_PRECONDITION],
      [internal("x"), "INTERNAL", status.INTERNAL],
    ];
    expect(cases.map((c) => c[1]).sort()).toEqual([...ERROR_CODES].sort());
    for (const [err, code, grpc] of cases) {
      expect(err.code).toBe(code);
      const s = toGrpcStatus(err);
      expect(s.code).toBe(grpc);
      expect(s.details).toBe(err.message);
    }
  });
});

describe("toGrpcStatus", () => {
  it("maps an aborted signal to CANCELLED and a timeout to DEADLINE_EXCEEDED", async () => {
    const ac = new AbortController();
    ac.abort();
    expect(toGrpcStatus(ac.signal.reason).code).toBe(status.CANCELLED);
    const t = AbortSignal.timeout(1);
    await new Promise((r) => setTimeout(r, 20));
    expect(t.aborted).toBe(true);
    expect(toGrpcStatus(t.reason).code).toBe(status.DEADLINE_EXCEEDED);
    const abortErr = Object.assign(new Error("This operation was aborted"), { name: "AbortError" });
    expect(toGrpcStatus(abortErr).code).toBe(status.CANCELLED);
    const abortByTimeout = Object.assign(new Error("aborted"), { name: "AbortError", cause: t.reason });
    expect(toGrpcStatus(abortByTimeout).code).toBe(status.DEADLINE_EXCEEDED);
  });
  it("maps plain errors to INTERNAL and passes grpc ServiceErrors through", () => {
    expect(toGrpcStatus(new Error("boom"))).toMatchObject({ code: status.INTERNAL, details: "boom" });
    expect(toGrpcStatus("weird")).toMatchObject({ code: status.INTERNAL, details: "weird" });
    const svc = Object.assign(new Error("14 UNAVAILABLE: connect failed"), {
      code: status.UNAVAILABLE,
      details: "connect failed",
      metadata: new Metadata(),
    });
    expect(toGrpcStatus(svc)).toMatchObject({ code: status.UNAVAILABLE, details: "connect failed" });
  });
});

describe("fromGrpcError", () => {
  it("rebuilds code and field from our metadata", () => {
    const s = toGrpcStatus(invalidArgument("batch.tokens.shape[1]", "expected 1024, got 1000"));
    const svc = Object.assign(new Error(`3 INVALID_ARGUMENT: ${s.details}`), s);
    const e = fromGrpcError(svc);
    expect(e.code).toBe("INVALID_ARGUMENT");
    expect(e.field).toBe("batch.tokens.shape[1]");
    expect(e.message).toBe("batch.tokens.shape[1]: expected 1024, got 1000");
  });
  it("folds foreign status codes onto ours", () => {
    const mk = (code: status) => Object.assign(new Error("x"), { code, details: "d", metadata: new Metadata() });
    expect(fromGrpcError(mk(status.ABORTED)).code).toBe("UNAVAILABLE");
    expect(fromGrpcError(mk(status.OUT_OF_RANGE)).code).toBe("INVALID_ARGUMENT");
    expect(fromGrpcError(mk(status.UNKNOWN)).code).toBe("INTERNAL");
    expect(fromGrpcError(mk(status.DEADLINE_EXCEEDED)).code).toBe("DEADLINE_EXCEEDED");
    expect(fromGrpcError(new Error("plain")).code).toBe("INTERNAL");
    const same = unavailable("x");
    expect(fromGrpcError(same)).toBe(same);
  });
  it("per-item RpcError round-trips the code", () => {
    const r = toRpcError(resourceExhausted("queue full (64)"));
    expect(r).toEqual({ code: status.RESOURCE_EXHAUSTED, message: "queue full (64)" });
    expect(fromRpcError(r).code).toBe("RESOURCE_EXHAUSTED");
  });
});

describe("abort helpers", () => {
  it("throwIfAborted throws CANCELLED or DEADLINE_EXCEEDED", async () => {
    expect(() => throwIfAborted(undefined)).not.toThrow();
    const ac = new AbortController();
    expect(() => throwIfAborted(ac.signal)).not.toThrow();
    ac.abort();
    expect(() => throwIfAborted(ac.signal)).toThrow(expect.objectContaining({ code: "CANCELLED" }));
    const t = AbortSignal.timeout(1);
    await new Promise((r) => setTimeout(r, 20));
    expect(() => throwIfAborted(t)).toThrow(expect.objectContaining({ code: "DEADLINE_EXCEEDED" }));
    const ac2 = new AbortController();
    ac2.abort(resourceExhausted("shed"));
    expect(() => throwIfAborted(ac2.signal)).toThrow(expect.objectContaining({ code: "RESOURCE_EXHAUSTED" }));
  });
  it("isRetryable / errorCodeOf", () => {
    expect(isRetryable(unavailable("x"))).toBe(true);
    expect(isRetryable(invalidArgument("f", "x"))).toBe(false);
    expect(errorCodeOf(new SwitchyardError("NOT_FOUND", "m"))).toBe("NOT_FOUND");
  });
});
