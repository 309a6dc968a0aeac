import { create, type JsonObject } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  BackoffSchema,
  LogLineSchema,
  ProgressUpdateSchema,
  StatusChangeSchema,
  TaskErrorSchema,
  TaskEventSchema,
  TaskSchema,
  TaskStatus,
  type Priority,
  type Task,
  type TaskError,
  type TaskEvent,
} from "../../gen/taskmesh/v1/task_pb.js";

/**
 * Translates between the task store's Redis layout and the `taskmesh.v1` messages, and folds a
 * task's event list into per-event snapshots. Pure functions: the Lua scripts in `lua/` write
 * what these read, and the tests check that the two agree.
 *
 * Layout of one task (`P` prefix, `q` queue), built to stay small (see task-store.ts):
 * - `P:{q}:t:<id>` HASH of short fields, each omitted when empty, zero or at the default noted:
 *   `s` status, `c` created ms, `h` scheduled ms (absent: `c`), `e` ms it became ready (absent:
 *   `c`), `n` tenant, `y` type, `p` priority (absent: 2), `m` max attempts (absent: 3), `l`
 *   result TTL ms (absent: 24 h), `r` run-at ms of a task submitted DELAYED, `af` affinity key,
 *   `ck` concurrency key and `cl` limit (here, not in the spec, because claim.lua and peek.lua
 *   read them for every candidate), `tp` the submitter's W3C traceparent (claim.lua hands it to
 *   the worker with each attempt), `d` the spec ({@link encodeSpec}; absent: all defaults),
 *   `o` the result JSON of a SUCCEEDED task; `a` attempt, `w` worker, `b` started ms, `f`
 *   finished ms, `g` progress, `gm` progress message, `x` error JSON, `cx` cancel-requested
 *   reason, `rq` how many times it was re-queued (worker lost, lease expired; reset by a retry
 *   from the dead-letter set), `q` last event number (absent: 1) and `qe` the last one stored in
 *   the event list (absent: 1). The absent-field defaults are {@link STORED_DEFAULTS}.
 * - `d` and `o` hold their JSON when it is at most {@link INLINE_MAX} bytes, else `""` and the
 *   JSON is in the STRING `P:{q}:d:<id>` (spec) or `P:{q}:r:<id>` (result). Redis keeps a hash
 *   whose values are all at most 64 bytes (`hash-max-listpack-value`) as a compact listpack,
 *   and switches it to a hash table, about three times larger, as soon as one value is longer.
 * - `P:{q}:ev:<id>` LIST of event entries ({@link EventEntry}) numbered 2..`qe` (the oldest are
 *   trimmed beyond the cap). Event 1 (submitted) is implied by `c` and `r` ({@link submitEntry});
 *   events `qe`+1..`q` are implied by the hash too ({@link impliedEntries}): the claim of the
 *   current attempt and the end of that attempt. So a task that ran once and ended has no list:
 *   the first event that cannot be implied (progress, log, retry wait, re-queue, ...) writes the
 *   implied ones to the list before the hash changes, then itself.
 * - The id ends with its queue's {@link queueTag}, which is how a task is found by id alone.
 */

/** What an absent hash field means (lib.lua DEF_PRI, DEF_MAX, DEF_TTL say the same). */
export const STORED_DEFAULTS = { priority: 2, maxAttempts: 3, resultTtlMs: 86_400_000 } as const;

/** The backoff a spec without `b` has (complete.lua uses the same numbers). */
export const DEFAULT_BACKOFF: Readonly<BackoffPolicy> = { initialMs: 1000, maxMs: 60_000, multiplier: 2, jitter: 0.2 };

/** Longest spec or result JSON kept in the task's hash (Redis' default hash-max-listpack-value). */
export const INLINE_MAX = 64;

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/**
 * The two characters (Crockford base 32, 10 bits) that end every task id of `queue`: a hash of
 * the name (FNV-1a). `P:queues` maps each tag back to its queue names (see lib.lua), so a task's
 * queue follows from its id without a per-task index.
 */
export function queueTag(queue: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < queue.length; i++) {
    h ^= queue.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  h = (h ^ (h >>> 10) ^ (h >>> 20)) & 0x3ff;
  return (CROCKFORD[h >> 5] as string) + (CROCKFORD[h & 31] as string);
}

/** A task to be stored, already validated and with defaults applied (see `submit.ts`). */
export interface NewTask {
  /** Time-sortable id (ULID). */
  id: string;
  tenant: string;
  type: string;
  /** Queue name; must not contain `{` or `}` (it becomes a Redis hash tag). */
  queue: string;
  priority: 1 | 2 | 3 | 4;
  payload: JsonObject;
  /** Empty for none (the dispatcher then hashes the task id). */
  affinityKey: string;
  maxAttempts: number;
  backoff: BackoffPolicy;
  /** Execution limit per attempt; 0 for none. */
  timeoutMs: number;
  /** When it may run (ms since the epoch); 0 (or a past time) means now. */
  runAtMs: number;
  /** Empty for none. */
  idempotencyKey: string;
  labels: Record<string, string>;
  /** How long a finished task is kept. */
  resultTtlMs: number;
  /**
   * Empty for none. At most {@link NewTask.concurrencyLimit} tasks of the same queue with this
   * key run at once; the key is scoped to its queue (a queue's keys share one hash tag), so the
   * same key in two queues names two independent groups. Every RUNNING task with a key counts
   * towards it, also one without a limit of its own.
   */
  concurrencyKey: string;
  /**
   * 0 for unlimited. Checked against the running count of {@link NewTask.concurrencyKey} when
   * this task is claimed: each task's own limit applies (tasks sharing a key should share it).
   */
  concurrencyLimit: number;
  /**
   * W3C `traceparent` of the request that submitted the task (at most 55 characters, so the hash
   * stays compact); the worker's span of each attempt is its child. Absent or empty: not traced.
   */
  traceparent?: string | undefined;
}

/** Retry delay policy: delay = min(maxMs, initialMs × multiplier^(attempt−1)), spread by ±jitter. */
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  multiplier: number;
  /** A fraction in [0, 1]. */
  jitter: number;
}

/** The immutable fields kept in the spec JSON. */
export interface TaskSpec {
  payload: JsonObject;
  labels: Record<string, string>;
  backoff: BackoffPolicy;
  timeoutMs: number;
  idempotencyKey: string;
}

/** Spec JSON as stored: short keys, defaults omitted; `b` is read by complete.lua. */
interface SpecJson {
  p?: JsonObject;
  l?: Record<string, string>;
  b?: [initialMs: number, maxMs: number, multiplier: number, jitter: number];
  to?: number;
  ik?: string;
}

function sameBackoff(a: BackoffPolicy, b: BackoffPolicy): boolean {
  return a.initialMs === b.initialMs && a.maxMs === b.maxMs && a.multiplier === b.multiplier && a.jitter === b.jitter;
}

/**
 * Serialises the immutable part of a task that does not get its own hash field; `""` when all
 * of it is at its default (no payload, labels, timeout or idempotency key, {@link DEFAULT_BACKOFF}).
 */
export function encodeSpec(t: NewTask): string {
  const s: SpecJson = {};
  if (Object.keys(t.payload).length > 0) s.p = t.payload;
  if (Object.keys(t.labels).length > 0) s.l = t.labels;
  if (!sameBackoff(t.backoff, DEFAULT_BACKOFF)) s.b = [t.backoff.initialMs, t.backoff.maxMs, t.backoff.multiplier, t.backoff.jitter];
  if (t.timeoutMs > 0) s.to = t.timeoutMs;
  if (t.idempotencyKey !== "") s.ik = t.idempotencyKey;
  return Object.keys(s).length === 0 ? "" : JSON.stringify(s);
}

/** Reads a spec written by {@link encodeSpec}; a missing spec reads as all defaults. */
export function decodeSpec(json: string | null | undefined): TaskSpec {
  const s = (json === null || json === undefined || json === "" ? {} : JSON.parse(json)) as SpecJson;
  const b = s.b;
  return {
    payload: s.p ?? {},
    labels: s.l ?? {},
    backoff: b === undefined ? { ...DEFAULT_BACKOFF } : { initialMs: b[0], maxMs: b[1], multiplier: b[2], jitter: b[3] },
    timeoutMs: s.to ?? 0,
    idempotencyKey: s.ik ?? "",
  };
}

/**
 * A task as the scripts return it: its hash, spec JSON and result JSON (from the hash or from
 * their own keys; null when there is none).
 */
export interface StoredTask {
  id: string;
  queue: string;
  hash: Record<string, string>;
  spec: string | null;
  result: string | null;
}

/**
 * What submit.lua stores for a new task at `now` (status QUEUED, or DELAYED when `runAtMs` is
 * later), so a submit can answer without reading the task back. `hash` is exactly the task's
 * hash; `bigSpec` is the spec JSON when it is too long for the hash (it then goes to key
 * `d:<id>`, and field `d` is `""`), else `""`.
 */
export function storedFromNew(t: NewTask, now: number): StoredTask & { bigSpec: string } {
  const delayed = t.runAtMs > now;
  const hash: Record<string, string> = {
    s: String(delayed ? TaskStatus.DELAYED : TaskStatus.QUEUED),
    c: String(now),
    n: t.tenant,
    y: t.type,
  };
  if (delayed) {
    hash["h"] = String(t.runAtMs);
    hash["r"] = String(t.runAtMs);
  }
  if (t.priority !== STORED_DEFAULTS.priority) hash["p"] = String(t.priority);
  if (t.maxAttempts !== STORED_DEFAULTS.maxAttempts) hash["m"] = String(t.maxAttempts);
  if (t.resultTtlMs !== STORED_DEFAULTS.resultTtlMs) hash["l"] = String(t.resultTtlMs);
  if (t.affinityKey !== "") hash["af"] = t.affinityKey;
  if (t.concurrencyKey !== "") hash["ck"] = t.concurrencyKey;
  if (t.concurrencyLimit > 0) hash["cl"] = String(t.concurrencyLimit);
  if (t.traceparent !== undefined && t.traceparent !== "") hash["tp"] = t.traceparent;
  const spec = encodeSpec(t);
  let bigSpec = "";
  if (spec !== "") {
    if (Buffer.byteLength(spec) <= INLINE_MAX) {
      hash["d"] = spec;
    } else {
      hash["d"] = "";
      bigSpec = spec;
    }
  }
  return { id: t.id, queue: t.queue, hash, spec: spec === "" ? null : spec, result: null, bigSpec };
}

/** Turns a flat HGETALL reply (`[field, value, ...]`) into a record. */
export function hashFromFlat(flat: readonly string[]): Record<string, string> {
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i] as string] = flat[i + 1] as string;
  return h;
}

function num(v: string | undefined): number {
  if (v === undefined || v === "") return 0;
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

function ts(v: string | undefined): Timestamp | undefined {
  return v === undefined || v === "" ? undefined : timestampFromMs(num(v));
}

/** The error JSON stored in field `err` and in status events. */
export interface ErrorJson {
  code: string;
  message: string;
  retryable: boolean;
}

function taskError(e: ErrorJson): TaskError {
  return create(TaskErrorSchema, { code: e.code, message: e.message, retryable: e.retryable });
}

function parseError(json: string | undefined): TaskError | undefined {
  if (json === undefined || json === "") return undefined;
  return taskError(JSON.parse(json) as ErrorJson);
}

/** Builds the Task message for a stored task. */
export function taskFromStored(s: StoredTask): Task {
  const h = s.hash;
  const spec = decodeSpec(s.spec);
  const task = create(TaskSchema, {
    id: s.id,
    type: h["y"] ?? "",
    payload: spec.payload,
    queue: s.queue,
    priority: (h["p"] === undefined ? STORED_DEFAULTS.priority : num(h["p"])) as Priority,
    affinityKey: h["af"] ?? "",
    maxAttempts: h["m"] === undefined ? STORED_DEFAULTS.maxAttempts : num(h["m"]),
    backoff: create(BackoffSchema, {
      initial: durationFromMs(spec.backoff.initialMs),
      max: durationFromMs(spec.backoff.maxMs),
      multiplier: spec.backoff.multiplier,
      jitter: spec.backoff.jitter,
    }),
    idempotencyKey: spec.idempotencyKey,
    labels: spec.labels,
    resultTtl: durationFromMs(h["l"] === undefined ? STORED_DEFAULTS.resultTtlMs : num(h["l"])),
    tenant: h["n"] ?? "",
    status: num(h["s"]) as TaskStatus,
    attempt: num(h["a"]),
    progress: num(h["g"]),
    progressMessage: h["gm"] ?? "",
    workerId: h["w"] ?? "",
    concurrencyKey: h["ck"] ?? "",
    concurrencyLimit: num(h["cl"]),
  });
  if (spec.timeoutMs > 0) task.timeout = durationFromMs(spec.timeoutMs);
  if (s.result !== null && s.result !== "") task.result = JSON.parse(s.result) as JsonObject;
  const error = parseError(h["x"]);
  if (error !== undefined) task.error = error;
  const times = { createdAt: ts(h["c"]), scheduledAt: ts(h["h"] ?? h["c"]), startedAt: ts(h["b"]), finishedAt: ts(h["f"]) };
  for (const [k, v] of Object.entries(times)) if (v !== undefined) task[k as keyof typeof times] = v;
  return task;
}

/**
 * One entry of a task's event list, as the scripts write it (compact JSON).
 * - `n` sequence (1, 2, ... per task), `t` time ms, `a` attempt, `k` kind:
 * - `"s"` status change from `f` to `s`; `w` worker (to RUNNING), `at` new scheduled time,
 *   `e` error;
 * - `"p"` progress `p` with message `m`;
 * - `"l"` log line `m`.
 */
export interface EventEntry {
  n: number;
  t: number;
  k: "s" | "p" | "l";
  a: number;
  f?: number;
  s?: number;
  w?: string;
  at?: number;
  e?: ErrorJson;
  p?: number;
  m?: string;
}

/** Parses one event list entry; throws on a malformed one. */
export function parseEventEntry(raw: string): EventEntry {
  const e = JSON.parse(raw) as Partial<EventEntry>;
  if (typeof e.n !== "number" || typeof e.t !== "number" || (e.k !== "s" && e.k !== "p" && e.k !== "l")) {
    throw new Error("malformed task event entry");
  }
  return { ...e, n: e.n, t: e.t, k: e.k, a: typeof e.a === "number" ? e.a : 0 };
}

/** The first event of a task (sequence 1: submitted as QUEUED, or DELAYED until `r`), rebuilt from its hash. */
export function submitEntry(hash: Readonly<Record<string, string>>): EventEntry {
  const created = num(hash["c"]);
  const runAt = hash["r"];
  return runAt === undefined
    ? { n: 1, t: created, k: "s", a: 0, f: TaskStatus.UNSPECIFIED, s: TaskStatus.QUEUED, at: created }
    : { n: 1, t: created, k: "s", a: 0, f: TaskStatus.UNSPECIFIED, s: TaskStatus.DELAYED, at: num(runAt) };
}

/**
 * The events after the last stored one (`qe`) up to the last one (`q`), rebuilt from the hash
 * exactly as lib.lua flush_events writes them when it stores them: the claim of the current
 * attempt (QUEUED → RUNNING at `b` by `w`), when the task is RUNNING or two events are implied,
 * and the end of that attempt (RUNNING → the terminal status at `f`, error `x`), when it ended.
 */
export function impliedEntries(hash: Readonly<Record<string, string>>): EventEntry[] {
  const q = num(hash["q"]) || 1;
  const qe = num(hash["qe"]) || 1;
  if (q <= qe) return [];
  const st = num(hash["s"]) as TaskStatus;
  const a = num(hash["a"]);
  const out: EventEntry[] = [];
  if (q - qe >= 2 || st === TaskStatus.RUNNING) {
    out.push({ n: qe + 1, t: num(hash["b"]), k: "s", a, f: TaskStatus.QUEUED, s: TaskStatus.RUNNING, w: hash["w"] ?? "" });
  }
  if (isTerminal(st)) {
    const x = hash["x"];
    const end: EventEntry = { n: q, t: num(hash["f"]), k: "s", a, f: TaskStatus.RUNNING, s: st };
    if (x !== undefined) end.e = JSON.parse(x) as ErrorJson;
    out.push(end);
  }
  return out;
}

const TERMINAL: ReadonlySet<TaskStatus> = new Set([TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED]);

/** Whether a status is final (only RetryTask leaves it). */
export function isTerminal(status: TaskStatus): boolean {
  return TERMINAL.has(status);
}

/**
 * The state to fold a task's events over. With the whole history (`firstSeq` 1) that is the
 * task's immutable fields and creation time with every mutable field at its zero value. When
 * the oldest events were trimmed away, the current state is the best seed there is: every
 * entry carries status and attempt, so those stay exact; fields only older events set
 * (worker, start time, ...) may show their latest value early.
 */
export function foldBase(current: Task, firstSeq: number): Task {
  if (firstSeq > 1) return current;
  const base: Task = {
    ...current,
    status: TaskStatus.UNSPECIFIED,
    attempt: 0,
    progress: 0,
    progressMessage: "",
    workerId: "",
    result: undefined,
    error: undefined,
    scheduledAt: undefined,
    startedAt: undefined,
    finishedAt: undefined,
  };
  return base;
}

/**
 * The snapshot after one event: the same rules the scripts follow when they write the hash.
 * `result` is the task's stored result (only a SUCCEEDED event takes it: a result is written once,
 * with that event). Returns a new object; nested messages are shared, so treat them as read-only.
 */
export function applyEvent(state: Task, e: EventEntry, result: JsonObject | undefined): Task {
  const next: Task = { ...state, attempt: e.a };
  switch (e.k) {
    case "s": {
      const to = (e.s ?? TaskStatus.UNSPECIFIED) as TaskStatus;
      next.status = to;
      if (e.w !== undefined) next.workerId = e.w;
      if (e.at !== undefined) next.scheduledAt = timestampFromMs(e.at);
      if (e.e !== undefined) next.error = taskError(e.e);
      if (to === TaskStatus.RUNNING) {
        next.startedAt = timestampFromMs(e.t);
        next.progress = 0;
        next.progressMessage = "";
      }
      next.finishedAt = isTerminal(to) ? timestampFromMs(e.t) : undefined;
      if (to === TaskStatus.SUCCEEDED) {
        next.error = undefined;
        next.result = result;
      }
      break;
    }
    case "p":
      // Progress and logs are accepted only from the current running attempt.
      next.status = TaskStatus.RUNNING;
      next.progress = e.p ?? 0;
      next.progressMessage = e.m ?? "";
      break;
    case "l":
      next.status = TaskStatus.RUNNING;
      break;
  }
  return next;
}

/** The TaskEvent message for an entry and the snapshot after it. */
export function toTaskEvent(taskId: string, e: EventEntry, snapshot: Task): TaskEvent {
  let event: TaskEvent["event"];
  switch (e.k) {
    case "s": {
      const change = create(StatusChangeSchema, {
        from: (e.f ?? 0) as TaskStatus,
        to: (e.s ?? 0) as TaskStatus,
        attempt: e.a,
        workerId: snapshot.workerId,
      });
      if (e.e !== undefined) change.error = taskError(e.e);
      event = { case: "statusChange", value: change };
      break;
    }
    case "p":
      event = { case: "progress", value: create(ProgressUpdateSchema, { attempt: e.a, progress: e.p ?? 0, message: e.m ?? "" }) };
      break;
    case "l":
      event = { case: "log", value: create(LogLineSchema, { attempt: e.a, line: e.m ?? "" }) };
      break;
  }
  return create(TaskEventSchema, { taskId, sequence: BigInt(e.n), time: timestampFromMs(e.t), event, task: snapshot });
}

/**
 * Folds entries (in order) over `base`, the state before the first of them. Returns one
 * TaskEvent per entry with the snapshot after it, and the final state.
 */
export function foldEvents(
  base: Task,
  entries: readonly EventEntry[],
  result: JsonObject | undefined,
): { events: TaskEvent[]; state: Task } {
  const events: TaskEvent[] = [];
  let state = base;
  for (const e of entries) {
    state = applyEvent(state, e, result);
    events.push(toTaskEvent(state.id, e, state));
  }
  return { events, state };
}
