/**
 * The built-in task types every worker runs. Part of the contract: the scheduler
 * accepts these even before a worker has registered; other types must be announced by a worker.
 */
export const BUILTIN_TASK_TYPES: readonly string[] = [
  "data_processing",
  "file_operation",
  "http_request",
  "health_check",
  "noop",
  "sleep",
  "fail",
];

/** Request limits shared by the gateway and the scheduler. */
export const LIMITS = {
  /** Largest payload of one task, in bytes of its JSON form. */
  maxPayloadBytes: 1024 * 1024,
  /**
   * Deepest nesting of objects and arrays in a payload. Each level is two messages in protobuf
   * (Struct or ListValue, then Value), and decoders stop at 100 messages deep: a task — inside a
   * response, inside a batch — must decode wherever it goes.
   */
  maxPayloadDepth: 32,
  /**
   * Deepest nesting of a JSON request body (REST, Connect JSON): a payload at its deepest, in a
   * batch, with room to spare, and still far from the decoders' limit (see maxPayloadDepth).
   */
  maxJsonBodyDepth: 40,
  /** Most tasks in one SubmitTasks call. */
  maxBatch: 1000,
  /** Longest task type, queue, key or label. */
  maxNameLength: 200,
} as const;

/** The header that carries the caller's tenant from the gateway to the scheduler. */
export const TENANT_HEADER = "x-taskmesh-tenant";

/** The header that names who makes a configuration change (the caller's API key id). */
export const AUTHOR_HEADER = "x-taskmesh-author";
/**
 * Internal header: the gateway's id (a ULID) of one forwarded SubmitTask(s) call. The scheduler
 * derives the new tasks' ids from it, so the same call retried on another replica stores nothing
 * new and returns the tasks the first attempt stored.
 */
export const REQUEST_ID_HEADER = "x-taskmesh-request-id";

/** How deeply objects and arrays nest in `v` (a scalar is 0), counted up to `stop` levels. */
export function jsonDepth(v: unknown, stop: number): number {
  if (typeof v !== "object" || v === null || stop <= 0) return 0;
  let deepest = 0;
  for (const child of Array.isArray(v) ? v : Object.values(v)) {
    deepest = Math.max(deepest, jsonDepth(child, stop - 1));
    if (deepest + 1 >= stop) break;
  }
  return deepest + 1;
}
