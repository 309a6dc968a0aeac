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
