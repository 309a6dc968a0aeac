/**
 * The handler API: what a task handler receives and may throw, plus small helpers for handlers.
 * Built-in and user handlers import it (user modules through `handlers.ts`, which re-exports it).
 */

/** Any value that survives a JSON round trip and fits a `google.protobuf.Value`. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

/** A JSON object: the shape of a task payload and of a task result (`google.protobuf.Struct`). */
export type JsonObject = { [k: string]: JsonValue };

/** What a handler gets besides its payload: identity, cancellation and reporting. */
export interface TaskContext {
  /** The task being run. */
  readonly taskId: string;
  /** The attempt number (1 for the first run); reports are fenced by it. */
  readonly attempt: number;
  /** The tenant that submitted the task ("" when unknown). Keep tenants' data apart by it. */
  readonly tenant: string;
  /** Fires on cancel, timeout or worker shutdown; reason is a TaskFailure or a CancelledError. */
  readonly signal: AbortSignal;
  /**
   * W3C `traceparent` of this attempt's span (a child of the request that submitted the task):
   * send it as the `traceparent` header of outgoing calls so they join the task's trace.
   * Undefined when the task is not traced.
   */
  readonly traceparent?: string | undefined;
  /** Reports progress: `percent` is rounded and clamped to 0..100. */
  progress(percent: number, message?: string): void;
  /** Adds a line to the task's event stream (long lines are cut). */
  log(line: string): void;
}

/**
 * A task type's implementation. It returns the result (an object, or anything JSON that the
 * executor wraps as `{ value }`; `undefined` means `{}`), or throws: a {@link TaskFailure} for a
 * failure with a code, anything else for a retryable `HANDLER_ERROR`.
 */
export type TaskHandler = (payload: JsonObject, ctx: TaskContext) => Promise<JsonValue | undefined>;

/** A failure with a machine code; `retryable = false` means do not retry. */
export class TaskFailure extends Error {
  /** Machine-readable code, e.g. `INVALID_PAYLOAD`, `TIMEOUT`, `HANDLER_ERROR`. */
  readonly code: string;
  /** Whether another attempt might succeed. */
  readonly retryable: boolean;

  constructor(code: string, message: string, retryable: boolean, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TaskFailure";
    this.code = code;
    this.retryable = retryable;
  }

  /**
   * True for a TaskFailure, also one made by another copy of this module (a user handlers module
   * may import its own copy), recognised by shape.
   */
  static is(err: unknown): err is TaskFailure {
    if (err instanceof TaskFailure) return true;
    if (!(err instanceof Error) || err.name !== "TaskFailure") return false;
    const e = err as Error & { code?: unknown; retryable?: unknown };
    return typeof e.code === "string" && typeof e.retryable === "boolean";
  }
}

/** The abort reason of a cancelled attempt (a cancel request or the worker shutting down). */
export class CancelledError extends Error {
  /** Why the attempt was cancelled, e.g. the user's reason or `"shutdown"`. */
  readonly reason: string;

  constructor(reason: string) {
    super(`cancelled: ${reason}`);
    this.name = "CancelledError";
    this.reason = reason;
  }
}

/**
 * Waits `ms` milliseconds unless `signal` fires first, in which case it rejects with the
 * signal's reason (a TaskFailure or CancelledError inside a handler). For handlers' own waits.
 */
export function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolveDelay, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolveDelay();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** A payload validation error: `INVALID_PAYLOAD`, never retried. */
export function invalidPayload(message: string): TaskFailure {
  return new TaskFailure("INVALID_PAYLOAD", message, false);
}

/** True for a plain JSON object (not null, not an array). */
export function isJsonObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Reads a required string field, or throws INVALID_PAYLOAD naming it. */
export function requireString(payload: JsonObject, field: string): string {
  const v = payload[field];
  if (typeof v !== "string") throw invalidPayload(`${field}: must be a string`);
  return v;
}

/** Reads an optional string field (absent or null → undefined), or throws INVALID_PAYLOAD. */
export function optionalString(payload: JsonObject, field: string): string | undefined {
  const v = payload[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw invalidPayload(`${field}: must be a string`);
  return v;
}

/**
 * Reads an optional non-negative finite number (absent or null → `fallback`), or throws
 * INVALID_PAYLOAD naming the field. `max` caps it (values above are refused).
 */
export function optionalNonNegative(payload: JsonObject, field: string, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = payload[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > max) {
    throw invalidPayload(`${field}: must be a number between 0 and ${max}`);
  }
  return v;
}

/** Reads an optional boolean (absent or null → `fallback`), or throws INVALID_PAYLOAD. */
export function optionalBoolean(payload: JsonObject, field: string, fallback: boolean): boolean {
  const v = payload[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "boolean") throw invalidPayload(`${field}: must be a boolean`);
  return v;
}
