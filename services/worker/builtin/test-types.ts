import {
  abortableDelay,
  optionalBoolean,
  optionalNonNegative,
  optionalString,
  TaskFailure,
  type JsonObject,
  type TaskContext,
  type TaskHandler,
} from "../task-api.js";

/** Longest `sleep` accepted: one day. */
const MAX_SLEEP_MS = 86_400_000;

/** `noop` → `{}` at once: for benchmarks of the machinery itself. */
export const noop: TaskHandler = async () => ({});

/** `sleep` `{ ms }` → `{ slept_ms }` after `ms` milliseconds; aborts as soon as the signal fires. */
export const sleep: TaskHandler = async (payload: JsonObject, ctx: TaskContext) => {
  const ms = optionalNonNegative(payload, "ms", 0, MAX_SLEEP_MS);
  await abortableDelay(ms, ctx.signal);
  return { slept_ms: ms };
};

/**
 * `fail` `{ message?, retryable? }` always fails with code HANDLER_ERROR, the given message
 * (default "failed on purpose") and retryability (default false): for testing retries.
 */
export const fail: TaskHandler = async (payload: JsonObject) => {
  const message = optionalString(payload, "message") ?? "failed on purpose";
  const retryable = optionalBoolean(payload, "retryable", false);
  throw new TaskFailure("HANDLER_ERROR", message, retryable);
};
