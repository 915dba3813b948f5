// One error family for all of Switchyard, and the one module that maps errors to and from gRPC status.
//
// Every component throws SwitchyardError (or lets AbortError / TimeoutError from an AbortSignal escape);
// servers turn whatever they caught into a gRPC status with toGrpcStatus, clients turn a grpc-js ServiceError
// back into a SwitchyardError with fromGrpcError. The `code` strings are stable API: tests, logs and metrics
// labels use them.

import { Metadata, status } from "@grpc/grpc-js";
import type { RpcError } from "./gen/switchyard/v1/tensor.js";

export type ErrorCode =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "RESOURCE_EXHAUSTED"
  | "UNAVAILABLE"
  | "DEADLINE_EXCEEDED"
  | "CANCELLED"
  | "FAILED_PRECONDITION"
  | "INTERNAL";

export const ERROR_CODES: readonly ErrorCode[] = [
  "INVALID_ARGUMENT",
  "NOT_FOUND",
  "RESOURCE_EXHAUSTED",
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "CANCELLED",
  "FAILED_PRECONDITION",
  "INTERNAL",
];

/** Metadata keys carrying the stable code and the offending field across the wire. */
export const ERROR_CODE_METADATA_KEY = "switchyard-error-code";
export const ERROR_FIELD_METADATA_KEY = "switchyard-error-field";

export interface SwitchyardErrorOptions {
  /** The request field (dotted path, e.g. "batch.tokens.shape[1]") that was wrong, when there is one. */
  field?: string;
  cause?: unknown;
}

export class SwitchyardError extends Error {
  override readonly name = "SwitchyardError";
  readonly code: ErrorCode;
  readonly field?: string;

  /** `message` is the whole human-readable message; helpers below prefix it with the field. */
  constructor(code: ErrorCode, message: string, options: SwitchyardErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options.field !== undefined) this.field = options.field;
  }
}

export function isSwitchyardError(err: unknown, code?: ErrorCode): err is SwitchyardError {
  return err instanceof SwitchyardError && (code === undefined || err.code === code);
}

function withField(field: string | undefined, msg: string): string {
  return field ? `${field}: ${msg}` : msg;
}

/** A request field is malformed. The message reads "<field>: <msg>". */
export function invalidArgument(field: string, msg: string, cause?: unknown): SwitchyardError {
  return new SwitchyardError("INVALID_ARGUMENT", withField(field, msg), { field, cause });
}

export function notFound(msg: string, field?: string): SwitchyardError {
  return new SwitchyardError("NOT_FOUND", withField(field, msg), { field });
}

export function resourceExhausted(msg: string): SwitchyardError {
  return new SwitchyardError("RESOURCE_EXHAUSTED", msg);
}

export function unavailable(msg: string, cause?: unknown): SwitchyardError {
  return new SwitchyardError("UNAVAILABLE", msg, { cause });
}

export function deadlineExceeded(msg = "deadline exceeded"): SwitchyardError {
  return new SwitchyardError("DEADLINE_EXCEEDED", msg);
}

export function cancelled(msg = "cancelled"): SwitchyardError {
  return new SwitchyardError("CANCELLED", msg);
}

export function failedPrecondition(msg: string, field?: string): SwitchyardError {
  return new SwitchyardError("FAILED_PRECONDITION", withField(field, msg), { field });
}

export function internal(msg: string, cause?: unknown): SwitchyardError {
  return new SwitchyardError("INTERNAL", msg, { cause });
}

const TO_GRPC: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  NOT_FOUND: status.NOT_FOUND,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: status.UNAVAILABLE,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  CANCELLED: status.CANCELLED,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  INTERNAL: status.INTERNAL,
};

/** gRPC status numbers outside our eight fold onto the nearest code a caller can act on. */
const FROM_GRPC: Partial<Record<number, ErrorCode>> = {
  [status.INVALID_ARGUMENT]: "INVALID_ARGUMENT",
  [status.OUT_OF_RANGE]: "INVALID_ARGUMENT",
  [status.NOT_FOUND]: "NOT_FOUND",
  [status.RESOURCE_EXHAUSTED]: "RESOURCE_EXHAUSTED",
  [status.UNAVAILABLE]: "UNAVAILABLE",
  [status.ABORTED]: "UNAVAILABLE",
  [status.DEADLINE_EXCEEDED]: "DEADLINE_EXCEEDED",
  [status.CANCELLED]: "CANCELLED",
  [status.FAILED_PRECONDITION]: "FAILED_PRECONDITION",
  [status.ALREADY_EXISTS]: "FAILED_PRECONDITION",
  [status.PERMISSION_DENIED]: "FAILED_PRECONDITION",
  [status.UNAUTHENTICATED]: "FAILED_PRECONDITION",
  [status.UNIMPLEMENTED]: "FAILED_PRECONDITION",
  [status.INTERNAL]: "INTERNAL",
  [status.UNKNOWN]: "INTERNAL",
  [status.DATA_LOSS]: "INTERNAL",
};

export function grpcStatusOf(code: ErrorCode): status {
  return TO_GRPC[code];
}

export function errorCodeOfGrpcStatus(code: number): ErrorCode {
  return FROM_GRPC[code] ?? "INTERNAL";
}

/**
 * The ErrorCode an arbitrary thrown value stands for: SwitchyardError keeps its code; an AbortError whose
 * reason is a TimeoutError (AbortSignal.timeout, or a deadline we armed) is DEADLINE_EXCEEDED, any other abort
 * is CANCELLED; a grpc-js ServiceError keeps its status; everything else is INTERNAL.
 */
export function errorCodeOf(err: unknown): ErrorCode {
  if (err instanceof SwitchyardError) return err.code;
  if (err instanceof Error || isErrorLike(err)) {
    const e = err as { name?: unknown; code?: unknown; cause?: unknown };
    if (e.name === "TimeoutError") return "DEADLINE_EXCEEDED";
    if (e.name === "AbortError") {
      // fetch/undici and our own code put the abort reason into `cause`.
      if (e.cause instanceof SwitchyardError) return e.cause.code;
      if (isErrorLike(e.cause) && (e.cause as { name?: unknown }).name === "TimeoutError") return "DEADLINE_EXCEEDED";
      return "CANCELLED";
    }
    if (typeof e.code === "number" && Number.isInteger(e.code) && e.code >= 0 && e.code <= 16) {
      return errorCodeOfGrpcStatus(e.code);
    }
  }
  return "INTERNAL";
}

function isErrorLike(x: unknown): boolean {
  return typeof x === "object" && x !== null && "name" in x && "message" in x;
}

function messageOf(err: unknown): string {
  if (err instanceof Error) {
    // grpc-js ServiceError messages are "<code> <NAME>: <details>"; keep only the details when present.
    const details = (err as { details?: unknown }).details;
    if (typeof details === "string" && details.length > 0) return details;
    return err.message || err.name;
  }
  if (typeof err === "string") return err;
  return String(err);
}

export interface GrpcStatus {
  code: status;
  details: string;
  /** Carries the stable code and field so fromGrpcError can rebuild the same SwitchyardError. */
  metadata: Metadata;
}

/**
 * Map anything thrown to a gRPC status. The result can be passed straight to a grpc-js unary callback
 * (`callback(toGrpcStatus(err))`) or to `call.destroy`/`emit("error")` on streams.
 */
export function toGrpcStatus(err: unknown): GrpcStatus {
  const code = errorCodeOf(err);
  let details: string;
  if (err instanceof SwitchyardError) details = err.message;
  else if (code === "DEADLINE_EXCEEDED" && !(err instanceof Error && (err as { details?: unknown }).details))
    details = `deadline exceeded${err instanceof Error && err.message ? ` (${err.message})` : ""}`;
  else if (code === "CANCELLED" && err instanceof Error && err.name === "AbortError")
    details = `cancelled${err.message ? ` (${err.message})` : ""}`;
  else details = messageOf(err);
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_METADATA_KEY, code);
  if (err instanceof SwitchyardError && err.field) metadata.set(ERROR_FIELD_METADATA_KEY, err.field);
  return { code: TO_GRPC[code], details, metadata };
}

/**
 * Turn an error received from a grpc-js client call (a ServiceError) back into a SwitchyardError. The code comes
 * from our metadata when the peer is a Switchyard server, otherwise from the gRPC status number.
 */
export function fromGrpcError(err: unknown): SwitchyardError {
  if (err instanceof SwitchyardError) return err;
  const e = (typeof err === "object" && err !== null ? err : {}) as {
    code?: unknown;
    details?: unknown;
    metadata?: unknown;
  };
  let code = errorCodeOf(err);
  let field: string | undefined;
  if (e.metadata instanceof Metadata) {
    const c = e.metadata.get(ERROR_CODE_METADATA_KEY)[0];
    if (typeof c === "string" && (ERROR_CODES as readonly string[]).includes(c)) code = c as ErrorCode;
    const f = e.metadata.get(ERROR_FIELD_METADATA_KEY)[0];
    if (typeof f === "string" && f.length > 0) field = f;
  }
  const msg = typeof e.details === "string" && e.details.length > 0 ? e.details : messageOf(err);
  return new SwitchyardError(code, msg, { field, cause: err });
}

/** Per-item error inside a stream reply (RpcError message). */
export function toRpcError(err: unknown): RpcError {
  const s = toGrpcStatus(err);
  return { code: s.code, message: s.details };
}

export function fromRpcError(e: RpcError): SwitchyardError {
  return new SwitchyardError(errorCodeOfGrpcStatus(e.code), e.message);
}

/** Whether retrying the same request elsewhere may succeed (a worker is down or overloaded). */
export function isRetryable(err: unknown): boolean {
  const code = errorCodeOf(err);
  return code === "UNAVAILABLE" || code === "RESOURCE_EXHAUSTED";
}

/**
 * Throw the abort reason of a signal as a SwitchyardError: DEADLINE_EXCEEDED for timeouts, CANCELLED otherwise.
 * Long-running loops call this between chunks of work.
 */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const r = signal.reason as unknown;
  if (r instanceof SwitchyardError) throw r;
  if (isErrorLike(r) && (r as { name?: unknown }).name === "TimeoutError") throw deadlineExceeded();
  throw cancelled();
}
