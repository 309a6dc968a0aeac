import { createHash } from "node:crypto";
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { pooledRandom } from "../../lib/random.js";
import { Priority, type SubmitTaskRequest } from "../../gen/taskmesh/v1/task_pb.js";
import { invalidArgument } from "../../lib/errors.js";
import { LIMITS, jsonDepth } from "../../lib/task-types.js";
import { isTraceparent } from "../../lib/tracing.js";
import { queueTag } from "./task-codec.js";
import type { NewTask } from "./task-store.js";

/** Defaults applied to fields a submitter leaves empty. */
export interface SubmitDefaults {
  maxAttempts: number;
  backoff: { initialMs: number; maxMs: number; multiplier: number; jitter: number };
  /** 0 = no limit. */
  timeoutMs: number;
  resultTtlMs: number;
  maxPayloadBytes: number;
}

/** The defaults: 3 attempts, 1 s → 60 s backoff doubling with 20% jitter, 24 h results. */
export const DEFAULT_SUBMIT: SubmitDefaults = {
  maxAttempts: 3,
  backoff: { initialMs: 1000, maxMs: 60_000, multiplier: 2, jitter: 0.2 },
  timeoutMs: 0,
  resultTtlMs: 24 * 3600 * 1000,
  maxPayloadBytes: LIMITS.maxPayloadBytes,
};

const NAME = /^[A-Za-z0-9_.:-]+$/;
const DAY_MS = 24 * 3600 * 1000;
const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const RANDOM_CHARS = 14;

/**
 * Makes task ids: ULIDs (26 characters of Crockford base 32: 10 of milliseconds, 16 of
 * randomness) whose last two characters are the queue's tag ({@link queueTag}), so the task
 * store finds a task's queue from its id alone. That leaves 14 random characters (70 bits):
 * ids from different scheduler replicas collide only if they share the millisecond, the queue
 * tag and all 70 bits (and the store refuses an id that is taken). Within one process ids are
 * monotonic like ulid's `monotonicFactory`: in the same (or an earlier) millisecond the random
 * part is the previous one plus 1, so ids sort in the order they were made.
 */
export function taskIdFactory(random: () => number = pooledRandom()): (queue: string, nowMs: number) => string {
  let lastMs = -1;
  let time = "";
  const digits = new Array<number>(RANDOM_CHARS).fill(0);
  return (queue, nowMs) => {
    const ms = Math.floor(nowMs);
    if (ms > lastMs) {
      lastMs = ms;
      for (let i = 0; i < RANDOM_CHARS; i++) digits[i] = Math.floor(random() * 32);
      time = "";
      for (let i = 0, v = ms; i < 10; i++, v = Math.floor(v / 32)) time = (CROCKFORD[v % 32] as string) + time;
    } else {
      let i = RANDOM_CHARS - 1;
      while (i >= 0 && digits[i] === 31) digits[i--] = 0;
      if (i < 0) throw new Error("task id randomness exhausted within one millisecond");
      digits[i] = (digits[i] as number) + 1;
    }
    let id = time;
    for (const d of digits) id += CROCKFORD[d] as string;
    return id + queueTag(queue);
  };
}

const nextId = taskIdFactory();

/** A ULID: 10 characters of milliseconds, 16 of randomness, Crockford base 32 (upper case). */
const ULID = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;
const RANDOM_BITS = BigInt(RANDOM_CHARS * 5);

/** True when `requestId` is a well-formed request id (a ULID), as the gateway makes them. */
export function isRequestId(requestId: string): boolean {
  return ULID.test(requestId);
}

/**
 * Task ids derived from a request id (a ULID made by the gateway per forwarded submit), so that
 * the same request retried on another replica names the same tasks and stores nothing new
 * (submit.lua returns the task already stored under an id of the same tenant). The id of task
 * `index` is: the request id's 10 time characters, then 14 characters of `base + index` where
 * `base` is 69 bits of SHA-256(tenant, request id) — so the ids of one request sort in their
 * order, and requests of different tenants never share ids even with the same request id — then
 * the queue's tag. `requestId` must satisfy {@link isRequestId}.
 */
export function requestTaskIds(requestId: string, tenant: string): (index: number, queue: string) => string {
  const digest = createHash("sha256").update(tenant).update("\0").update(requestId).digest();
  // 69 bits, so base + index (index < LIMITS.maxBatch) stays inside the 70 bits of 14 characters.
  let base = 0n;
  for (let i = 0; i < 9; i++) base = (base << 8n) | BigInt(digest[i] as number);
  base &= (1n << (RANDOM_BITS - 1n)) - 1n;
  const time = requestId.slice(0, 10);
  return (index, queue) => {
    let v = base + BigInt(index);
    let random = "";
    for (let i = 0; i < RANDOM_CHARS; i++, v >>= 5n) random = (CROCKFORD[Number(v & 31n)] as string) + random;
    return time + random + queueTag(queue);
  };
}

function durationMs(d: Duration | undefined): number {
  if (d === undefined) return 0;
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

function timestampMs(t: Timestamp | undefined): number {
  if (t === undefined) return 0;
  return Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
}

function checkName(field: string, value: string, required: boolean): void {
  if (value === "") {
    if (required) throw invalidArgument(field, "is required");
    return;
  }
  if (value.length > LIMITS.maxNameLength) throw invalidArgument(field, `longer than ${LIMITS.maxNameLength} characters`);
  if (!NAME.test(value)) throw invalidArgument(field, "may contain only letters, digits and _ . : -");
}

function checkDuration(field: string, d: Duration | undefined, maxMs: number): number {
  if (d === undefined) return 0;
  if (d.seconds < 0n || d.nanos < 0) throw invalidArgument(field, "must not be negative");
  const ms = durationMs(d);
  if (ms > maxMs) throw invalidArgument(field, `must be at most ${maxMs} ms`);
  return ms;
}

/**
 * Validates one SubmitTaskRequest and turns it into the store's NewTask, or throws
 * INVALID_ARGUMENT naming the field (prefixed with `path`, e.g. "tasks[3]."). `traceparent` is
 * the submitting request's W3C trace context (the scheduler's span), kept with the task so its
 * attempts join that trace; a malformed one is dropped, not an error (tracing never fails a submit).
 * `makeId` names the task from its queue (see {@link requestTaskIds}); without it the id is a new
 * monotonic ULID ({@link taskIdFactory}).
 */
export function toNewTask(
  req: SubmitTaskRequest,
  tenant: string,
  knownTypes: ReadonlySet<string>,
  defaults: SubmitDefaults,
  now: number,
  path = "",
  traceparent?: string,
  makeId?: (queue: string) => string,
): NewTask {
  const f = (name: string): string => `${path}${name}`;
  checkName(f("type"), req.type, true);
  if (!knownTypes.has(req.type)) throw invalidArgument(f("type"), `unknown task type ${JSON.stringify(req.type)}`);
  const queue = req.queue === "" ? "default" : req.queue;
  checkName(f("queue"), queue, true);
  const payload = req.payload ?? {};
  const payloadBytes = Buffer.byteLength(JSON.stringify(payload));
  if (payloadBytes > defaults.maxPayloadBytes) {
    throw invalidArgument(f("payload"), `is ${payloadBytes} bytes, more than the limit of ${defaults.maxPayloadBytes}`);
  }
  const depth = jsonDepth(payload, LIMITS.maxPayloadDepth + 1);
  if (depth > LIMITS.maxPayloadDepth) {
    throw invalidArgument(f("payload"), `nests objects and arrays more than ${LIMITS.maxPayloadDepth} levels deep`);
  }
  let priority: 1 | 2 | 3 | 4;
  switch (req.priority) {
    case Priority.UNSPECIFIED:
    case Priority.NORMAL:
      priority = 2;
      break;
    case Priority.LOW:
      priority = 1;
      break;
    case Priority.HIGH:
      priority = 3;
      break;
    case Priority.CRITICAL:
      priority = 4;
      break;
    default:
      throw invalidArgument(f("priority"), `unknown value ${String(req.priority)}`);
  }
  if (req.affinityKey.length > LIMITS.maxNameLength) throw invalidArgument(f("affinity_key"), "too long");
  if (req.maxAttempts < 0 || req.maxAttempts > 100) throw invalidArgument(f("max_attempts"), "must be between 0 and 100");
  const b = req.backoff;
  const backoff = { ...defaults.backoff };
  if (b !== undefined) {
    const initial = checkDuration(f("backoff.initial"), b.initial, DAY_MS);
    const max = checkDuration(f("backoff.max"), b.max, 7 * DAY_MS);
    if (initial > 0) backoff.initialMs = initial;
    if (max > 0) backoff.maxMs = max;
    if (b.multiplier !== undefined) {
      if (!(b.multiplier >= 1 && b.multiplier <= 100)) throw invalidArgument(f("backoff.multiplier"), "must be between 1 and 100");
      backoff.multiplier = b.multiplier;
    }
    if (b.jitter !== undefined) {
      if (!(b.jitter >= 0 && b.jitter <= 1)) throw invalidArgument(f("backoff.jitter"), "must be between 0 and 1");
      backoff.jitter = b.jitter;
    }
    if (backoff.maxMs < backoff.initialMs) backoff.maxMs = backoff.initialMs;
  }
  const timeoutMs = checkDuration(f("timeout"), req.timeout, DAY_MS) || defaults.timeoutMs;
  if (req.runAt !== undefined && req.delay !== undefined) throw invalidArgument(f("run_at"), "set run_at or delay, not both");
  const delayMs = checkDuration(f("delay"), req.delay, 365 * DAY_MS);
  let runAtMs = 0;
  if (req.runAt !== undefined) {
    runAtMs = timestampMs(req.runAt);
    if (runAtMs > now + 365 * DAY_MS) throw invalidArgument(f("run_at"), "more than a year ahead");
    if (runAtMs <= now) runAtMs = 0;
  } else if (delayMs > 0) {
    runAtMs = now + delayMs;
  }
  if (req.idempotencyKey.length > LIMITS.maxNameLength) throw invalidArgument(f("idempotency_key"), "too long");
  const labels = Object.entries(req.labels);
  if (labels.length > 64) throw invalidArgument(f("labels"), "at most 64 labels");
  for (const [k, v] of labels) {
    checkName(f(`labels[${JSON.stringify(k)}]`), k, true);
    if (v.length > LIMITS.maxNameLength) throw invalidArgument(f(`labels[${JSON.stringify(k)}]`), "value too long");
  }
  const resultTtlMs = checkDuration(f("result_ttl"), req.resultTtl, 30 * DAY_MS) || defaults.resultTtlMs;
  checkName(f("concurrency_key"), req.concurrencyKey, false);
  if (req.concurrencyLimit < 0) throw invalidArgument(f("concurrency_limit"), "must not be negative");
  return {
    id: makeId === undefined ? nextId(queue, now) : makeId(queue),
    tenant,
    type: req.type,
    queue,
    priority,
    payload,
    affinityKey: req.affinityKey,
    maxAttempts: req.maxAttempts === 0 ? defaults.maxAttempts : req.maxAttempts,
    backoff,
    timeoutMs,
    runAtMs,
    idempotencyKey: req.idempotencyKey,
    labels: { ...req.labels },
    resultTtlMs,
    concurrencyKey: req.concurrencyKey,
    concurrencyLimit: req.concurrencyLimit,
    ...(traceparent !== undefined && isTraceparent(traceparent) ? { traceparent } : {}),
  };
}
