import { create, type JsonObject } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { ClientContext, Redis, RedisValue, Result } from "ioredis";
import { defineScripts } from "./lua-scripts.js";
import { QueueStatsSchema, type QueueStats } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import type { Task, TaskEvent, TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { invalidArgument } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import { ReplicaWaiter, type ReplicaTicket } from "../../lib/redis.js";
import {
  decodeSpec,
  foldBase,
  foldEvents,
  hashFromFlat,
  impliedEntries,
  parseEventEntry,
  queueTag,
  storedFromNew,
  submitEntry,
  taskFromStored,
  type EventEntry,
  type NewTask,
  type StoredTask,
} from "./task-codec.js";

export type { NewTask, BackoffPolicy } from "./task-codec.js";

/**
 * The scheduler's task store: every task state change is one Lua script call on Redis, batched
 * (many tasks per call) and fenced by attempt, so a late report from an old attempt can never
 * overwrite a newer one. The key layout is below; `task-codec.ts` has the fields of a task's hash.
 *
 * Keys (`P` = prefix; a queue's keys share the hash tag `{q}`, so one queue fits one Cluster slot).
 * The layout keeps a task small (scenario E of bench/: Redis bytes per task): one compact hash
 * per task and list entries elsewhere; sorted sets, which cost about 120 bytes per member, only
 * for running, delayed and finished tasks.
 * - `P:{q}:t:<id>` HASH, and only when needed `P:{q}:d:<id>`, `P:{q}:r:<id>`, `P:{q}:ev:<id>`:
 *   one task (task-codec.ts). Task ids are ULIDs whose last two characters are the queue's tag
 *   (task-codec.ts queueTag), so the queue of a task follows from its id.
 * - `P:{q}:ready:<priority>:<tenant>` LIST (priority 1 LOW .. 4 CRITICAL) of the tenant's QUEUED
 *   ids of that priority in order of (enqueue time, id), oldest at the head: one lane of four
 *   lists per tenant, and `P:{q}:lanes` SET the tenants whose lanes are not empty. The dispatch
 *   order within a lane merges the four by {@link readyScore}, computed when read (so a change of
 *   the aging rate applies to the tasks already waiting); the dispatcher takes turns by lane. A new task goes to the tail, a re-queued one near the head; an
 *   insertion elsewhere (a late promotion, another replica's clock) scans from the nearer end
 *   (lib.lua sorted_insert). Claim and cancel remove by id (LREM, cheap near the head).
 * - `P:{q}:delayed` ZSET of DELAYED and RETRY_WAIT ids by due time; `P:{q}:rw` counts the
 *   RETRY_WAIT ones (so stats need no scan).
 * - `P:{q}:running` ZSET of RUNNING ids by lease deadline.
 * - `P:{q}:cc` HASH concurrency key → how many of the queue's RUNNING tasks have that key; a
 *   field exists only while its count is above 0. Kept exact by every script that moves a task
 *   into RUNNING (claim) or out of it (complete, requeue, expire, which also covers cancel
 *   requests, since a running task ends only through those). Concurrency keys are therefore
 *   scoped to their queue.
 * - `P:{q}:paused` STRING "1" while the queue is paused ({@link TaskStore.setPaused}).
 * - `P:{q}:epoch` STRING the epoch of the newest scheduler leader that claimed, re-queued or
 *   expired the queue's tasks: older leaders' writes of that kind are refused (lib.lua fence).
 * - `P:{q}:done` ZSET of finished ids by expiry time; `P:{q}:dead` ZSET of FAILED and CANCELLED
 *   ids (the dead-letter set) by finish time.
 * - `P:queues` HASH: queue name → its tag for every queue that had a task or was paused, and
 *   `}<tag>` → the names of the queues with that tag joined by `}` (lib.lua register_queue).
 * - `P:tn:<tenant>` LIST of the tenant's ids in ascending order (ids sort by creation time),
 *   paged newest first by {@link TaskStore.list} (a binary search finds the page token's place);
 *   an expired task's id is removed (usually the head). `P:idem:<tenant>:<key>` STRING id,
 *   24 h. These assume a tenant name never contains `:` (else tenant `a:b` with key `c` and
 *   tenant `a` with key `b:c` would share a key): the scheduler's RPC layer admits only
 *   `/^[A-Za-z0-9_.-]{1,100}$/`, and callers of the store must keep to that.
 * - Channel `P:ev:<id>`: the sequence number of each new event of the task.
 * - What the leader visits (lib.lua indexes; docs/fairness.md): `P:ready` SET of the queues that
 *   may have QUEUED tasks (their lanes name the tenants); `P:due`,
 *   `P:lease`, `P:reap` ZSETs: queue → a time at or before which it next has a delayed task due,
 *   a lease running out, a finished task expiring.
 * - `P:tq:<tenant>` HASH queue → the tenant's unfinished tasks in it, `*` → their total: what
 *   the quotas ({@link TenantQuota}) are checked against.
 * - `P:replmark` STRING, 60 s: written (with `waitReplicas`) before the WAIT of a submit that
 *   found its tasks stored already, so that the WAIT covers their write too (see waitReplicas).
 *
 * The global keys (queues, tn, idem, ready, due, lease, reap, tq, replmark) are outside the queues' hash tags: fine on one Redis, and
 * the known obstacle to Redis Cluster. Scripts receive queue-wide keys in KEYS and build
 * per-task keys and ready lists from the prefix and queue (all inside the queue's hash tag), as
 * BullMQ does.
 * The Redis connection must not use ioredis' `keyPrefix` (use `prefix`): scripts could not see it.
 */
export interface TaskStoreOptions {
  redis: Redis;
  /** Key prefix. @default "tm" */
  prefix?: string | undefined;
  /**
   * How many ms of waiting one priority level is worth (see {@link readyScore}).
   * @default 5000
   */
  agingMsPerLevel?: number | undefined;
  /** Called after every Redis script call with its name and duration (for a latency metric). */
  onRedisCall?: ((op: string, seconds: number) => void) | undefined;
  /**
   * Events kept in a task's event list; older ones are trimmed. Up to two more (the claim and
   * end of the current attempt) may be implied by the task's hash (task-codec.ts). @default 1000
   */
  maxEvents?: number | undefined;
  /**
   * How many times a task may go back to the ready set because its attempt was lost (worker
   * gone, lease expired) before the next loss ends it FAILED with error TOO_MANY_REQUEUES
   * (dead-lettered): a task that kills its worker every time must not go round forever.
   * 0 fails it at the first loss. {@link TaskStore.retry} gives it a fresh count.
   * @default 10
   */
  maxRequeues?: number | undefined;
  /**
   * How many ready tasks blocked by their concurrency key {@link TaskStore.peekReady} steps over
   * in one call before it returns what it found: bounds the work of a call when a long run of
   * blocked tasks sits at the head of a queue (tasks behind more than this many blocked ones
   * wait until some of those can start).
   * @default 5000
   */
  maxPeekSkip?: number | undefined;
  /**
   * Replicas that must have a {@link TaskStore.submit}'s writes before it returns (Redis WAIT,
   * see ReplicaWaiter). Submits then go through a connection of their own (a duplicate of
   * `redis`, command and socket timeouts extended by `waitTimeoutMs`): WAIT blocks the
   * connection it runs on until the replicas answer or its timeout passes, and on a shared one
   * every claim, lease upkeep and read would queue behind it while a replica is unreachable.
   * WAIT covers every write made on its connection before it, so a submit that finds its tasks
   * stored already (an idempotency key, a retried request id) writes a marker on that connection
   * first: the WAIT then also covers the earlier write of those tasks, whichever connection made
   * it. When fewer replicas acknowledge within `waitTimeoutMs`, the submit fails UNAVAILABLE with
   * `retry-after`, marked DEPENDENCY_UNAVAILABLE (its tasks may have been stored: retry with the
   * same idempotency key); while the master has fewer replicas connected, submits are refused
   * before anything is stored. 0: a submit returns once the master has applied it, and a
   * failover may lose what asynchronous replication had not yet copied. Other writes (claims,
   * results, cancels) never wait. @default 0
   */
  waitReplicas?: number | undefined;
  /** How long a submit waits for `waitReplicas` replicas, in ms (at least 1). @default 1000 */
  waitTimeoutMs?: number | undefined;
  logger: Logger;
}

/** A task handed to a worker by {@link TaskStore.claim}. */
export interface ClaimedTask {
  id: string;
  attempt: number;
  type: string;
  payload: JsonObject;
  /** 0 for none. */
  timeoutMs: number;
  queue: string;
  tenant: string;
  labels: Record<string, string>;
  workerId: string;
  /** W3C traceparent of the submitting request; absent when the task was not traced. */
  traceparent?: string;
  /** When the task became ready (ms), for the queue-wait metric; 0 when unknown. */
  readyAtMs: number;
}

/** What {@link TaskStore.submit} returns per task. */
export interface SubmitResult {
  /** The task as stored (QUEUED or DELAYED when new), or the earlier one of its idempotency key. */
  task: Task;
  /** True when the idempotency key found an earlier task (nothing was stored). */
  existing: boolean;
  /** Set when the task was claimed for its planned worker in the same call (see DirectClaims). */
  claimed?: ClaimedTask;
}

/**
 * Direct claims at submit (the leader's fast lane): `workers[i]` is the worker the dispatcher
 * would pick for task i (undefined: none), with a slot reserved. The store claims the task for
 * it in the same Lua call when that changes no order (due now, queue not paused, nothing of the
 * queue QUEUED, concurrency key has room); otherwise the task queues as usual.
 */
export interface DirectClaims {
  workers: ReadonlyArray<string | undefined>;
  leaseMs: number;
  /** The leader asking: a stamp that would be fenced (see {@link FencedError}) gets no direct claim. */
  leader: LeaderStamp;
}

/**
 * What a leader-only write carries (claims, re-queues, lease expiry; see lib.lua fence): the
 * leader's epoch, and until when (ms, the leader's clock) its leadership is known to hold. Redis
 * refuses the write if a later epoch has worked on the queue, or if the write arrives after `until`.
 */
export interface LeaderStamp {
  epoch: bigint;
  until: number;
}

/**
 * A leader-only write that Redis refused (it changed nothing), for one of two reasons:
 * - a leader of a later epoch has worked on the queue (`newerEpoch` > 0): the caller was deposed
 *   and must stop leading;
 * - the write reached Redis after its stamp's `until` ({@link late}; `newerEpoch` 0): the
 *   caller's lease was not confirmed in time, nothing says another leader exists. Its leadership
 *   pauses by itself once the lease is overdue (Leadership), or goes on if etcd confirmed the
 *   lease meanwhile; giving the candidacy up for it would turn a pause into an election.
 */
export class FencedError extends Error {
  /** `newerEpoch`: the epoch that took over, or 0 when the write reached Redis after its leader's `until`. */
  constructor(readonly newerEpoch: bigint) {
    super(newerEpoch === 0n ? "refused: it reached Redis after its leadership was known to hold" : `refused: a leader of epoch ${newerEpoch} has taken over`);
    this.name = "FencedError";
  }

  /** True when the write came too late (after `until`) rather than from a deposed leader. */
  get late(): boolean {
    return this.newerEpoch === 0n;
  }
}

/**
 * What a tenant may hold (docs/fairness.md): unfinished tasks in at most `maxQueues` queues, and
 * at most `maxTasks` unfinished tasks in all; 0 = no limit.
 */
export interface TenantQuota {
  maxQueues: number;
  maxTasks: number;
}

/** A submit refused, storing nothing, because it would take `tenant` over a quota. */
export class QuotaExceededError extends Error {
  constructor(
    readonly tenant: string,
    /** `queues`: one queue too many; `tasks`: too many unfinished tasks. */
    readonly quota: "queues" | "tasks",
    readonly limit: number,
    readonly current: number,
  ) {
    super(
      quota === "queues"
        ? `tenant ${tenant} already has unfinished tasks in ${current} queues, the most it may use (max_queues_per_tenant ${limit})`
        : `tenant ${tenant} has ${current} unfinished tasks; these would exceed its quota (max_tasks_per_tenant ${limit})`,
    );
    this.name = "QuotaExceededError";
  }
}

/** The leader's indexes of queues to visit (lib.lua): due tasks, running-out leases, expiring results. */
export type QueueIndex = "due" | "lease" | "reap";

/** One attempt of a task: what worker reports are fenced by. */
export interface TaskRef {
  id: string;
  attempt: number;
}

/** How an attempt ended, as reported by its worker. */
export type TaskOutcome =
  | { kind: "succeeded"; result: JsonObject }
  | { kind: "failed"; code: string; message: string; retryable: boolean }
  | { kind: "cancelled"; reason: string };

/** Filters of {@link TaskStore.list}; empty or absent ones match everything. */
export interface ListFilter {
  status?: TaskStatus | undefined;
  type?: string | undefined;
  queue?: string | undefined;
  label?: [key: string, value: string] | undefined;
}

/**
 * Returned by {@link TaskStore.onEvent}: call it to unsubscribe. `ready` settles once the
 * subscription is live; read history after it to miss nothing.
 */
export type Unsubscribe = (() => void) & { readonly ready: Promise<void> };

/**
 * The ready score of a task enqueued at `enqMs` with priority `priority` (1 LOW .. 4 CRITICAL):
 * `enqMs − (priority − 1) × agingMsPerLevel`, lower first. So higher priority goes first, FIFO
 * inside a level (equal scores fall back to the ULID, i.e. creation order), and no starvation:
 * a task enqueued at e₁ with priority p₁ goes before one enqueued at e₂ with p₂ whenever
 * e₂ − e₁ > (p₂ − p₁) × agingMsPerLevel. Each level is worth agingMsPerLevel of waiting, and any
 * task enqueued more than 3 × agingMsPerLevel after a given task, whatever its priority, queues
 * behind it: a task only ever waits for tasks that arrived before it or less than
 * (4 − its priority) × agingMsPerLevel after it.
 */
export function readyScore(enqMs: number, priority: number, agingMsPerLevel: number): number {
  return enqMs - (priority - 1) * agingMsPerLevel;
}

const SCRIPTS = {
  tmSubmit: { file: "submit", keys: 6 },
  tmClaim: { file: "claim", keys: 4 },
  tmRenew: { file: "renew", keys: 1 },
  tmReport: { file: "report", keys: 1 },
  tmComplete: { file: "complete", keys: 6 },
  tmRequeue: { file: "requeue", keys: 5 },
  tmExpire: { file: "expire", keys: 5 },
  tmLead: { file: "lead", keys: 4 },
  tmPromote: { file: "promote", keys: 2 },
  tmCancel: { file: "cancel", keys: 4 },
  tmRetry: { file: "retry", keys: 2 },
  tmReap: { file: "reap", keys: 8 },
  tmIdle: { file: "idle", keys: 1 },
  tmPause: { file: "pause", keys: 2 },
  tmGet: { file: "get", keys: 1, readOnly: true },
  tmLocate: { file: "locate", keys: 1, readOnly: true },
  tmList: { file: "list", keys: 2, readOnly: true },
  tmPeek: { file: "peek", keys: 2, readOnly: true },
  tmEvents: { file: "events", keys: 1, readOnly: true },
  tmStats: { file: "stats", keys: 5, readOnly: true },
} as const;

declare module "ioredis" {
  // The task store's Lua scripts (services/scheduler/lua), defined by TaskStore on its connection.
  interface RedisCommander<Context extends ClientContext = { type: "default" }> {
    tmSubmit(...args: RedisValue[]): Result<unknown, Context>;
    tmClaim(...args: RedisValue[]): Result<unknown, Context>;
    tmRenew(...args: RedisValue[]): Result<unknown, Context>;
    tmReport(...args: RedisValue[]): Result<unknown, Context>;
    tmComplete(...args: RedisValue[]): Result<unknown, Context>;
    tmRequeue(...args: RedisValue[]): Result<unknown, Context>;
    tmExpire(...args: RedisValue[]): Result<unknown, Context>;
    tmLead(...args: RedisValue[]): Result<unknown, Context>;
    tmPromote(...args: RedisValue[]): Result<unknown, Context>;
    tmCancel(...args: RedisValue[]): Result<unknown, Context>;
    tmRetry(...args: RedisValue[]): Result<unknown, Context>;
    tmReap(...args: RedisValue[]): Result<unknown, Context>;
    tmIdle(...args: RedisValue[]): Result<unknown, Context>;
    tmPause(...args: RedisValue[]): Result<unknown, Context>;
    tmGet(...args: RedisValue[]): Result<unknown, Context>;
    tmLocate(...args: RedisValue[]): Result<unknown, Context>;
    tmList(...args: RedisValue[]): Result<unknown, Context>;
    tmPeek(...args: RedisValue[]): Result<unknown, Context>;
    tmEvents(...args: RedisValue[]): Result<unknown, Context>;
    tmStats(...args: RedisValue[]): Result<unknown, Context>;
  }
}

/** Tasks per script call: bounds how long one call blocks Redis (about 5–10 ms at 500). */
const BATCH = 500;
/** How many id → queue mappings to remember (they never change). */
const QUEUE_CACHE_SIZE = 100_000;
/** How many watched tasks' folded event state to remember for incremental reads. */
const FOLD_CACHE_SIZE = 1000;
/** Largest page {@link TaskStore.list} returns. */
const MAX_PAGE = 1000;
/** Lists never scan more than this many ids per call. */
const MAX_SCAN = 10_000;

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function arr(x: unknown): unknown[] {
  if (!Array.isArray(x)) throw new Error("unexpected task store script reply");
  return x;
}

function str(x: unknown): string {
  if (typeof x === "string") return x;
  if (typeof x === "number") return String(x);
  throw new Error("unexpected task store script reply");
}

function strOrNull(x: unknown): string | null {
  // A Lua `false` is a nil reply over RESP2 and a boolean over RESP3.
  return x === null || x === undefined || x === false ? null : str(x);
}

function int(x: unknown): number {
  const n = Number(x);
  if (!Number.isFinite(n)) throw new Error("unexpected task store script reply");
  return n;
}

function stored(x: unknown): StoredTask {
  const a = arr(x);
  return {
    id: str(a[0]),
    queue: str(a[1]),
    hash: hashFromFlat(arr(a[2]).map(str)),
    spec: strOrNull(a[3]),
    result: strOrNull(a[4]),
  };
}

function storedOrUndefined(x: unknown): StoredTask | undefined {
  return x === null || x === undefined || x === false ? undefined : stored(x);
}

function pairs(flat: unknown): TaskRef[] {
  const a = arr(flat);
  const out: TaskRef[] = [];
  for (let i = 0; i + 1 < a.length; i += 2) out.push({ id: str(a[i]), attempt: int(a[i + 1]) });
  return out;
}

/** Validates a queue name for use inside a Redis hash tag. */
function checkQueue(queue: string): void {
  if (queue === "" || queue.includes("{") || queue.includes("}")) {
    throw invalidArgument("queue", "must be non-empty and must not contain { or }");
  }
}

/** Redis-backed task state: queues, leases, retries, dead letters, events. */
export class TaskStore {
  private readonly redis: Redis;
  private readonly onRedisCall: ((op: string, seconds: number) => void) | undefined;
  private readonly prefix: string;
  private aging: number;
  private readonly maxEvents: number;
  private readonly maxRequeues: number;
  private readonly maxPeekSkip: number;
  private readonly replicaWaiter: ReplicaWaiter | undefined;
  /** Where submits go: `redis`, or with `waitReplicas` a connection of their own (closed by {@link close}). */
  private readonly submitRedis: Redis;
  private readonly logger: Logger;
  private readonly queueOf = new Map<string, string>();
  private readonly folded = new Map<string, { seq: number; task: Task }>();
  private sub: Redis | undefined;
  private readonly channels = new Map<string, { listeners: Set<(seq: number) => void>; ready: Promise<void> }>();
  private closed = false;

  constructor(opts: TaskStoreOptions) {
    this.redis = opts.redis;
    this.onRedisCall = opts.onRedisCall;
    this.prefix = opts.prefix ?? "tm";
    this.aging = opts.agingMsPerLevel ?? 5000;
    this.maxEvents = opts.maxEvents ?? 1000;
    this.maxRequeues = Math.max(0, Math.floor(opts.maxRequeues ?? 10));
    this.maxPeekSkip = Math.max(0, Math.floor(opts.maxPeekSkip ?? 5000));
    this.logger = opts.logger.child({ component: "task-store" });
    defineScripts(this.redis, "lib", SCRIPTS, "TaskStore");
    const waitReplicas = Math.max(0, Math.floor(opts.waitReplicas ?? 0));
    if (waitReplicas === 0) {
      this.submitRedis = this.redis;
      this.replicaWaiter = undefined;
    } else {
      const waitMs = Math.max(1, Math.floor(opts.waitTimeoutMs ?? 1000));
      const { commandTimeout, socketTimeout } = this.redis.options;
      const submitRedis = this.redis.duplicate({
        ...(commandTimeout !== undefined ? { commandTimeout: commandTimeout + waitMs } : {}),
        ...(socketTimeout !== undefined ? { socketTimeout: socketTimeout + waitMs } : {}),
      });
      submitRedis.on("error", (err: unknown) => {
        this.logger.warn({ err }, "submit connection error");
      });
      defineScripts(submitRedis, "lib", SCRIPTS, "TaskStore");
      this.submitRedis = submitRedis;
      this.replicaWaiter = new ReplicaWaiter(submitRedis, {
        replicas: waitReplicas,
        timeoutMs: waitMs,
        subject: "the tasks",
        onCall: opts.onRedisCall,
      });
    }
  }

  // ---- keys and helpers ----

  private keys(queue: string) {
    const q = `${this.prefix}:{${queue}}:`;
    return {
      delayed: `${q}delayed`,
      running: `${q}running`,
      done: `${q}done`,
      dead: `${q}dead`,
      rw: `${q}rw`,
      cc: `${q}cc`,
      paused: `${q}paused`,
      epoch: `${q}epoch`,
    };
  }

  private get queuesKey(): string {
    return `${this.prefix}:queues`;
  }

  /** The ARGV header every script starts with (see lib.lua). */
  private header(queue: string, now: number): RedisValue[] {
    return [this.prefix, queue, String(Math.floor(now)), this.maxEvents, this.aging];
  }

  private remember(id: string, queue: string): void {
    if (this.queueOf.has(id)) return;
    if (this.queueOf.size >= QUEUE_CACHE_SIZE) {
      const oldest = this.queueOf.keys().next();
      if (oldest.done !== true) this.queueOf.delete(oldest.value);
    }
    this.queueOf.set(id, queue);
  }

  /**
   * Groups items by their task's queue (cached, else found by the queue tag that ends the id, see
   * locate.lua). Ids no queue can hold go to `unknown`.
   */
  private async byQueue<T extends { id: string }>(items: readonly T[]): Promise<{ groups: Map<string, { item: T; index: number }[]>; unknown: number[] }> {
    const missing = [...new Set(items.filter((it) => !this.queueOf.has(it.id)).map((it) => it.id))];
    if (missing.length > 0) {
      const replies = await Promise.all(
        chunks(missing, BATCH).map((part) => this.timed("Locate", this.redis.tmLocate(this.queuesKey, ...this.header("", 0), ...part))),
      );
      const queues = replies.flatMap((r) => arr(r).map(strOrNull));
      missing.forEach((id, i) => {
        const q = queues[i];
        if (q !== null && q !== undefined) this.remember(id, q);
      });
    }
    const groups = new Map<string, { item: T; index: number }[]>();
    const unknown: number[] = [];
    items.forEach((item, index) => {
      const q = this.queueOf.get(item.id);
      if (q === undefined) {
        unknown.push(index);
        return;
      }
      let g = groups.get(q);
      if (g === undefined) groups.set(q, (g = []));
      g.push({ item, index });
    });
    return { groups, unknown };
  }

  /** Runs `fn` for each queue's chunks of items, all calls in flight at once (pipelined). */
  private async perQueue<T extends { id: string }>(
    items: readonly T[],
    fn: (queue: string, part: { item: T; index: number }[]) => Promise<void>,
  ): Promise<number[]> {
    const { groups, unknown } = await this.byQueue(items);
    const calls: Promise<void>[] = [];
    for (const [queue, group] of groups) for (const part of chunks(group, BATCH)) calls.push(fn(queue, part));
    await Promise.all(calls);
    return unknown;
  }

  private toTask(s: StoredTask): Task {
    this.remember(s.id, s.queue);
    return taskFromStored(s);
  }

  // ---- API ----

  /**
   * Stores new tasks: one script call per queue present in the batch (pipelined), atomic per task.
   * A task whose (tenant, idempotency key) matches a live task from the last 24 h is not stored:
   * the earlier task is returned instead, flagged `existing`. New tasks are QUEUED, or DELAYED
   * when `runAtMs` is later than `now`; each gets its first event. With `waitReplicas`, resolves
   * only once the replicas have them (else fails UNAVAILABLE: see {@link submitUnconfirmed}).
   * With `quota`, a script call whose new tasks would take their tenant over its quota stores
   * none of them and the submit fails with {@link QuotaExceededError} (a batch over several
   * queues makes one call per queue: the other queues' calls may have stored theirs).
   */
  async submit(
    tasks: readonly NewTask[],
    now: number,
    direct?: DirectClaims,
    quota?: (tenant: string) => TenantQuota | undefined,
  ): Promise<SubmitResult[]> {
    const { results, replicated } = await this.submitUnconfirmed(tasks, now, direct, quota);
    await replicated;
    return results;
  }

  /**
   * {@link submit}, answering as soon as the master stored the tasks: `results` are what it
   * stored (tasks claimed at once among them: the caller must hand those to their workers either
   * way), `replicated` resolves once `waitReplicas` replicas have them (at once without
   * `waitReplicas`) or fails UNAVAILABLE (ReplicaWaiter.confirm). Rejects, before anything is
   * stored, while too few replicas are connected.
   */
  async submitUnconfirmed(
    tasks: readonly NewTask[],
    now: number,
    direct?: DirectClaims,
    quota?: (tenant: string) => TenantQuota | undefined,
  ): Promise<{ results: SubmitResult[]; replicated: Promise<void> }> {
    now = Math.floor(now);
    // Each tenant's quota, for the scripts (submit.lua checks it before it stores anything).
    const quotaArgs: RedisValue[] = [];
    if (quota !== undefined) {
      for (const tenant of new Set(tasks.map((t) => t.tenant))) {
        const q = quota(tenant);
        if (q !== undefined) quotaArgs.push(tenant, Math.max(0, Math.floor(q.maxQueues)), Math.max(0, Math.floor(q.maxTasks)));
      }
    }
    const out: SubmitResult[] = new Array(tasks.length);
    const leaseMs = direct === undefined ? 0 : Math.max(1, Math.floor(direct.leaseMs));
    const groups = new Map<string, number[]>();
    tasks.forEach((t, i) => {
      checkQueue(t.queue);
      if (!t.id.endsWith(queueTag(t.queue))) throw new Error(`task id ${t.id} does not end with the tag of queue ${t.queue}`);
      let g = groups.get(t.queue);
      if (g === undefined) groups.set(t.queue, (g = []));
      g.push(i);
    });
    const ticket = await this.replicaWaiter?.begin();
    const calls: Promise<void>[] = [];
    for (const [queue, indexes] of groups) {
      const k = this.keys(queue);
      for (const part of chunks(indexes, BATCH)) {
        const args: RedisValue[] = [
          k.delayed,
          this.queuesKey,
          k.running,
          k.cc,
          k.paused,
          k.epoch,
          ...this.header(queue, now),
          queueTag(queue),
          leaseMs,
          String(direct?.leader.epoch ?? 0n),
          Math.floor(direct?.leader.until ?? 0),
          quotaArgs.length / 3,
          ...quotaArgs,
        ];
        const made = part.map((i) => {
          const t = tasks[i] as NewTask;
          const s = storedFromNew({ ...t, runAtMs: Math.floor(t.runAtMs), resultTtlMs: Math.floor(t.resultTtlMs) }, now);
          const worker = direct?.workers[i] ?? "";
          const at = args.length;
          args.push(t.id, t.tenant, t.idempotencyKey, Math.floor(t.runAtMs), t.priority, s.bigSpec, worker, 0);
          // The hash's fields and values, then their count in the slot left for it.
          for (const key in s.hash) args.push(key, s.hash[key] as string);
          args[at + 7] = args.length - at - 8;
          return s;
        });
        calls.push(
          this.timed("Submit", this.submitRedis.tmSubmit(...args)).then((reply) => {
            const results = arr(reply);
            if (results[0] === "q") {
              throw new QuotaExceededError(str(results[1]), str(results[2]) === "queues" ? "queues" : "tasks", int(results[3]), int(results[4]));
            }
            part.forEach((i, j) => {
              const t = tasks[i] as NewTask;
              const r = arr(results[j]);
              switch (str(r[0])) {
                case "n":
                  // Not remembered: the queue follows from the id's tag, and a claim remembers it.
                  out[i] = { task: taskFromStored(made[j] as StoredTask), existing: false };
                  break;
                case "c":
                  this.remember(t.id, t.queue);
                  out[i] = {
                    task: taskFromStored(made[j] as StoredTask),
                    existing: false,
                    claimed: this.claimedFrom(r, t.id, queue, direct?.workers[i] ?? ""),
                  };
                  break;
                case "e":
                  out[i] = { task: this.toTask(stored(r[1])), existing: true };
                  break;
                default:
                  // 'x': the id belongs to another tenant's task (which is never returned).
                  throw new Error(`task id ${t.id} is taken by another tenant`);
              }
            });
          }),
        );
      }
    }
    await Promise.all(calls);
    const replicated = this.awaitReplicas(ticket, out.some((r) => r.existing));
    // Handled by the caller, who awaits it right after handing out the direct claims.
    replicated.catch(() => undefined);
    return { results: out, replicated };
  }

  /**
   * With `waitReplicas`, resolves once that many replicas have the submit connection's writes so
   * far (the submit's scripts among them), else fails UNAVAILABLE (ReplicaWaiter.confirm).
   * `foundStored`: the submit answered with tasks stored earlier, maybe by another connection
   * (or another replica) and not yet replicated; WAIT only covers writes of its own connection,
   * so a marker is written first: it follows their write in the replication stream.
   */
  private async awaitReplicas(ticket: ReplicaTicket | undefined, foundStored: boolean): Promise<void> {
    if (this.replicaWaiter === undefined || ticket === undefined) return;
    if (foundStored) await this.submitRedis.set(`${this.prefix}:replmark`, String(Date.now()), "PX", 60_000);
    await this.replicaWaiter.confirm(ticket);
  }

  /**
   * Task `id` claimed for `workerId` as claim.lua (and a direct claim of submit.lua) returns it:
   * {id (or 'c'), attempt, type, tenant, spec JSON, traceparent, ready ms}.
   */
  private claimedFrom(a: unknown[], id: string, queue: string, workerId: string): ClaimedTask {
    const spec = decodeSpec(strOrNull(a[4]));
    const traceparent = strOrNull(a[5]) ?? "";
    return {
      id,
      attempt: int(a[1]),
      type: strOrNull(a[2]) ?? "",
      payload: spec.payload,
      timeoutMs: spec.timeoutMs,
      queue,
      tenant: strOrNull(a[3]) ?? "",
      labels: spec.labels,
      workerId,
      ...(traceparent !== "" ? { traceparent } : {}),
      readyAtMs: Number(strOrNull(a[6]) ?? "0") || 0,
    };
  }

  /** One task by id, in whatever queue, or undefined. The caller checks the tenant. */
  async get(id: string): Promise<Task | undefined> {
    return (await this.getMany([id]))[0];
  }

  /** Tasks by id (undefined where unknown), in the order asked. */
  async getMany(ids: readonly string[]): Promise<(Task | undefined)[]> {
    const out: (Task | undefined)[] = [];
    const replies = await Promise.all(
      chunks(ids, BATCH).map((part) => this.timed("Get", this.redis.tmGet(this.queuesKey, ...this.header("", 0), ...part))),
    );
    for (const reply of replies) {
      for (const x of arr(reply)) {
        const s = storedOrUndefined(x);
        out.push(s === undefined ? undefined : this.toTask(s));
      }
    }
    return out;
  }

  /**
   * A tenant's tasks, newest first, filtered. Scans at most 10 × pageSize ids per call, so a page
   * may hold fewer than pageSize tasks (even none) while `nextPageToken` is not empty; an empty
   * token means the end. Page tokens are opaque (base64url of the last id scanned).
   */
  async list(
    tenant: string,
    filter: ListFilter,
    pageSize: number,
    pageToken: string,
  ): Promise<{ tasks: Task[]; nextPageToken: string }> {
    const size = Math.max(1, Math.min(Math.floor(pageSize), MAX_PAGE));
    let after = "";
    if (pageToken !== "") {
      after = Buffer.from(pageToken, "base64url").toString("utf8");
      if (!/^[0-9A-Za-z_-]{1,64}$/.test(after)) throw invalidArgument("page_token", "is malformed");
    }
    const label = filter.label;
    const reply = arr(
      await this.timed("List", this.redis.tmList(
        `${this.prefix}:tn:${tenant}`,
        this.queuesKey,
        ...this.header("", 0),
        after,
        size,
        Math.min(size * 10, MAX_SCAN),
        filter.status === undefined || filter.status === 0 ? "" : String(filter.status),
        filter.type ?? "",
        filter.queue ?? "",
        label?.[0] ?? "",
        label?.[1] ?? "",
      )),
    );
    const next = str(reply[0]);
    return {
      tasks: reply.slice(1).map((x) => this.toTask(stored(x))),
      nextPageToken: next === "" ? "" : Buffer.from(next, "utf8").toString("base64url"),
    };
  }

  /** Names of the queues that ever had a task or were paused, sorted. */
  async queues(): Promise<string[]> {
    const names = await this.redis.hkeys(this.queuesKey);
    // Fields starting with "}" map queue tags to names (lib.lua register_queue).
    return names.filter((n) => !n.startsWith("}")).sort();
  }

  /**
   * Pauses or resumes a queue. A paused queue still takes submissions, its delayed tasks still
   * become ready and its running tasks go on to the end, but {@link peekReady} returns nothing
   * and {@link claim} claims nothing for it; resumed, its ready tasks come out in the same
   * order as before. A paused queue is listed by {@link queues} and {@link stats} (with
   * `paused: true`) even when it has no task. Idempotent.
   */
  async setPaused(queue: string, paused: boolean): Promise<void> {
    checkQueue(queue);
    const k = this.keys(queue);
    await this.timed("Pause", this.redis.tmPause(k.paused, this.queuesKey, ...this.header(queue, 0), queueTag(queue), paused ? "1" : "0"));
  }

  /**
   * Up to `limit` ready tasks of a queue in dispatch order, without claiming them: the ones
   * {@link claim} would take right now. With `tenant`, only that tenant's lane (the dispatcher
   * takes turns by lane); without, every lane merged by {@link readyScore}. Empty while the queue is paused. Tasks whose concurrency
   * key is at their limit are filtered out in Redis (counting the tasks of that key earlier in
   * the same answer), so a blocked task never hides the ones behind it; the scan steps over at
   * most `maxPeekSkip` blocked tasks per call.
   */
  async peekReady(queue: string, limit: number, tenant?: string): Promise<{ id: string; type: string; affinityKey: string }[]> {
    if (limit < 1) return [];
    const k = this.keys(queue);
    const reply = arr(
      await this.timed("Peek", this.redis.tmPeek(k.cc, k.paused, ...this.header(queue, 0), Math.floor(limit), this.maxPeekSkip, tenant ?? "*")),
    );
    const out: { id: string; type: string; affinityKey: string }[] = [];
    for (let i = 0; i + 2 < reply.length; i += 3) {
      out.push({ id: str(reply[i]), type: str(reply[i + 1]), affinityKey: str(reply[i + 2]) });
    }
    return out;
  }

  /**
   * Claims tasks for workers, atomically per call: only tasks still QUEUED and in the ready set
   * are claimed (status RUNNING, attempt + 1, worker, start time, lease = now + leaseMs, moved to
   * running, event appended). A task with a concurrency key and limit is claimed only while
   * fewer than its limit of the queue's tasks with that key are RUNNING (claims are applied in
   * the order given, each counting for the next); a blocked one stays in the ready set at its
   * place. Nothing is claimed while the queue is paused. Returns the claimed ones; the rest are
   * skipped. Leader-only: fails with {@link FencedError} when a leader of a later `epoch` has
   * worked on the queue.
   */
  async claim(
    queue: string,
    claims: readonly { id: string; workerId: string }[],
    now: number,
    leaseMs: number,
    leader: LeaderStamp,
  ): Promise<ClaimedTask[]> {
    const k = this.keys(queue);
    const replies = await Promise.all(
      chunks(claims, BATCH).map((part) =>
        this.fenced(this.timed("Claim", this.redis.tmClaim(
          k.running,
          k.cc,
          k.paused,
          k.epoch,
          ...this.header(queue, now),
          Math.floor(leaseMs),
          String(leader.epoch),
          Math.floor(leader.until),
          ...part.flatMap((c) => [c.id, c.workerId]),
        ))),
      ),
    );
    const workerOf = new Map(claims.map((c) => [c.id, c.workerId]));
    const out: ClaimedTask[] = [];
    for (const reply of replies) {
      for (const x of arr(reply)) {
        const a = arr(x);
        const id = str(a[0]);
        this.remember(id, queue);
        out.push(this.claimedFrom(a, id, queue, workerOf.get(id) ?? ""));
      }
    }
    return out;
  }

  /**
   * Heartbeat: each attempt still RUNNING at that attempt gets lease = now + leaseMs. Returns the
   * refs that are stale (not current, or unknown) so the worker can be told to drop them.
   */
  async renew(refs: readonly TaskRef[], now: number, leaseMs: number): Promise<{ stale: TaskRef[] }> {
    const stale: TaskRef[] = [];
    const unknown = await this.perQueue(refs, async (queue, part) => {
      const reply = await this.timed("Renew", this.redis.tmRenew(
        this.keys(queue).running,
        ...this.header(queue, now),
        Math.floor(leaseMs),
        ...part.flatMap(({ item }) => [item.id, item.attempt]),
      ));
      stale.push(...pairs(reply));
    });
    for (const i of unknown) stale.push({ ...(refs[i] as TaskRef) });
    return { stale };
  }

  /** Progress of running attempts (0–100), fenced by attempt; each appends an event. */
  async progress(
    updates: readonly { id: string; attempt: number; progress: number; message: string }[],
    now: number,
  ): Promise<void> {
    await this.report(
      updates.map((u) => ({
        id: u.id,
        args: ["p", u.id, u.attempt, Math.max(0, Math.min(100, Math.round(u.progress))), u.message] as RedisValue[],
      })),
      now,
    );
  }

  /** Log lines of running attempts, fenced by attempt; each appends an event. */
  async log(lines: readonly { id: string; attempt: number; line: string }[], now: number): Promise<void> {
    await this.report(
      lines.map((l) => ({ id: l.id, args: ["l", l.id, l.attempt, 0, l.line] as RedisValue[] })),
      now,
    );
  }

  private async report(items: readonly { id: string; args: RedisValue[] }[], now: number): Promise<void> {
    await this.perQueue(items, async (queue, part) => {
      await this.timed("Report", this.redis.tmReport(this.keys(queue).running, ...this.header(queue, now), ...part.flatMap(({ item }) => item.args)));
    });
  }

  /**
   * Applies attempt results, fenced by attempt. Succeeded → SUCCEEDED. After a cancel request
   * ({@link cancel}), any other outcome → CANCELLED (with the requested reason) and dead-lettered.
   * Failed, retryable and attempt < maxAttempts → RETRY_WAIT until now + backoff(attempt) (with
   * jitter), else FAILED and dead-lettered. Cancelled without a cancel request (the worker gave up
   * on its own, e.g. shutting down) counts as a retryable failure ABORTED, so no task is lost.
   * Finished tasks are kept for their result TTL. Returns per item "applied" or "stale".
   */
  async complete(
    results: readonly { id: string; attempt: number; outcome: TaskOutcome }[],
    now: number,
  ): Promise<("applied" | "stale")[]> {
    const out: ("applied" | "stale")[] = results.map(() => "stale");
    await this.perQueue(results, async (queue, part) => {
      const k = this.keys(queue);
      const args: RedisValue[] = [k.running, k.delayed, k.done, k.dead, k.rw, k.cc, ...this.header(queue, now)];
      for (const { item } of part) {
        const o = item.outcome;
        switch (o.kind) {
          case "succeeded": {
            const json = Object.keys(o.result).length === 0 ? "" : JSON.stringify(o.result);
            args.push(item.id, item.attempt, "s", json, "", "", 0);
            break;
          }
          case "failed":
            args.push(item.id, item.attempt, "f", o.code, o.message, o.retryable ? "1" : "0", Math.random());
            break;
          case "cancelled":
            args.push(item.id, item.attempt, "c", o.reason, "", "", Math.random());
            break;
        }
      }
      const reply = arr(await this.timed("Complete", this.redis.tmComplete(...args)));
      part.forEach(({ index }, j) => {
        out[index] = int(reply[j]) === 1 ? "applied" : "stale";
      });
    });
    return out;
  }

  /**
   * Worker lost or stream broken: each attempt still RUNNING at that attempt goes back to QUEUED
   * at its old enqueue time (the front of its priority), with error REQUEUED (reason) recorded.
   * The attempt stays; the next claim increments it. A task with a pending cancel request ends
   * CANCELLED instead, and one already re-queued `maxRequeues` times ends FAILED with error
   * TOO_MANY_REQUEUES (both dead-lettered). Returns how many were re-queued. Leader-only:
   * fenced by `epoch` like {@link claim}.
   */
  async requeue(refs: readonly TaskRef[], reason: string, now: number, leader: LeaderStamp): Promise<number> {
    let n = 0;
    await this.perQueue(refs, async (queue, part) => {
      const k = this.keys(queue);
      const reply = await this.fenced(this.timed("Requeue", this.redis.tmRequeue(
        k.running,
        k.done,
        k.dead,
        k.cc,
        k.epoch,
        ...this.header(queue, now),
        "REQUEUED",
        reason,
        this.maxRequeues,
        String(leader.epoch),
        Math.floor(leader.until),
        ...part.flatMap(({ item }) => [item.id, item.attempt]),
      )));
      n += int(reply);
    });
    return n;
  }

  /**
   * Moves up to `limit` due DELAYED / RETRY_WAIT tasks of a queue to the ready set (QUEUED), each
   * counted as enqueued at its due time. Returns how many moved.
   */
  async promoteDue(queue: string, now: number, limit: number, tenants?: Set<string>): Promise<number> {
    if (limit < 1) return 0;
    const k = this.keys(queue);
    const r = arr(await this.timed("Promote", this.redis.tmPromote(k.delayed, k.rw, ...this.header(queue, now), Math.floor(limit))));
    for (const t of arr(r[1])) tenants?.add(str(t));
    return int(r[0]);
  }

  /**
   * Running tasks whose lease deadline passed go back to the ready set like {@link requeue}
   * (error LEASE_EXPIRED), or end as it describes. Returns the refs re-queued (not the ended ones).
   * Leader-only: fenced by `epoch` like {@link claim}.
   */
  async expireLeases(queue: string, now: number, limit: number, leader: LeaderStamp): Promise<TaskRef[]> {
    if (limit < 1) return [];
    const k = this.keys(queue);
    return pairs(
      await this.fenced(this.timed("Expire", this.redis.tmExpire(
        k.running,
        k.done,
        k.dead,
        k.cc,
        k.epoch,
        ...this.header(queue, now),
        Math.floor(limit),
        this.maxRequeues,
        String(leader.epoch),
        Math.floor(leader.until),
      ))),
    );
  }

  /**
   * A newly elected leader takes queues over (lead.lua): from now on an older leader's
   * claims, re-queues and lease expiries fail with {@link FencedError}, and every running
   * attempt's lease starts again at `now + leaseMs` (no leader could renew them meanwhile).
   * Returns how many leases were restarted. Fails with FencedError when a later leader was there.
   */
  async lead(queues: readonly string[], leader: LeaderStamp, now: number, leaseMs: number): Promise<number> {
    const counts = await Promise.all(
      queues.map(async (queue) => {
        const k = this.keys(queue);
        const reply = await this.fenced(
          this.timed("Lead", this.redis.tmLead(k.running, k.epoch, k.delayed, k.done, ...this.header(queue, now), Math.floor(leaseMs), String(leader.epoch), Math.floor(leader.until))),
        );
        return int(reply);
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  /** Turns the FENCED error of a leader-only script into a {@link FencedError}. */
  private async fenced<T>(call: Promise<T>): Promise<T> {
    try {
      return await call;
    } catch (err) {
      const m = err instanceof Error ? /\bFENCED (\d+)/.exec(err.message) : null;
      if (m !== null) throw new FencedError(BigInt(m[1] as string));
      throw err;
    }
  }

  /**
   * Cancels a task of `tenant`. QUEUED / DELAYED / RETRY_WAIT → CANCELLED at once (dead-lettered,
   * kept for its result TTL). RUNNING → a cancel request is recorded and `running` says which
   * worker to tell; its cancelled (or failed) result then ends it. Finished → returned unchanged.
   * Unknown, or another tenant's → undefined.
   */
  async cancel(
    tenant: string,
    id: string,
    reason: string,
    now: number,
  ): Promise<{ task: Task; running?: { workerId: string; attempt: number } } | undefined> {
    const [queue] = await this.queuesOf([id]);
    if (queue === undefined) return undefined;
    const k = this.keys(queue);
    const reply = arr(
      await this.timed("Cancel", this.redis.tmCancel(k.delayed, k.done, k.dead, k.rw, ...this.header(queue, now), tenant, id, reason === "" ? "cancelled" : reason)),
    );
    const code = str(reply[0]);
    if (code === "x") return undefined;
    const task = this.toTask(stored(reply[1]));
    if (code === "r") return { task, running: { workerId: str(reply[2]), attempt: int(reply[3]) } };
    return { task };
  }

  /**
   * Re-queues a FAILED or CANCELLED task of `tenant` now (out of the dead-letter set). Its attempt
   * count is kept, so the next claim makes attempt + 1 and a retryable failure then retries only
   * while attempt < maxAttempts; its re-queue count (see `maxRequeues`) starts again from 0.
   */
  async retry(tenant: string, id: string, now: number): Promise<{ task: Task } | { error: "not_found" | "not_dead" }> {
    const [queue] = await this.queuesOf([id]);
    if (queue === undefined) return { error: "not_found" };
    const k = this.keys(queue);
    const reply = arr(await this.timed("Retry", this.redis.tmRetry(k.done, k.dead, ...this.header(queue, now), tenant, id)));
    switch (str(reply[0])) {
      case "x":
        return { error: "not_found" };
      case "d":
        return { error: "not_dead" };
      default:
        return { task: this.toTask(stored(reply[1])) };
    }
  }

  /** Deletes up to `limit` finished tasks whose result TTL passed, with every key and index entry. */
  async reapExpired(queue: string, now: number, limit: number): Promise<{ reaped: number; removed: boolean }> {
    if (limit < 1) return { reaped: 0, removed: false };
    const k = this.keys(queue);
    const r = arr(
      await this.timed(
        "Reap",
        this.redis.tmReap(k.done, k.dead, k.running, k.delayed, k.paused, this.queuesKey, k.rw, k.cc, ...this.header(queue, now), Math.floor(limit), queueTag(queue)),
      ),
    );
    return { reaped: int(r[0]), removed: int(r[1]) === 1 };
  }

  /**
   * The queues that may have QUEUED tasks (a superset: see {@link idle}), each with the tenants
   * whose lanes hold them ('' for tasks queued before lanes existed).
   */
  async readyQueues(): Promise<Map<string, string[]>> {
    const queues = await this.redis.smembers(`${this.prefix}:ready`);
    const tenants = await Promise.all(queues.map((q) => this.redis.smembers(`${this.prefix}:{${q}}:lanes`)));
    return new Map(queues.map((q, i) => [q, tenants[i] ?? []]));
  }

  /**
   * The dispatcher found nothing to claim in `tenant`'s lane of `queue`: the lane leaves the
   * index if it is empty, the queue if it has no QUEUED task or is paused (idle.lua). True when
   * the lane or the queue left.
   */
  async idle(queue: string, tenant: string): Promise<boolean> {
    const k = this.keys(queue);
    return int(await this.timed("Idle", this.redis.tmIdle(k.paused, ...this.header(queue, 0), tenant))) === 1;
  }

  /**
   * Up to `limit` queues of an index of the leader's (lib.lua) whose next time is at or before
   * `now`: `due` has delayed tasks to promote ({@link promoteDue}), `lease` leases to expire
   * ({@link expireLeases}), `reap` results to reap ({@link reapExpired}).
   */
  async dueQueues(index: QueueIndex, now: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(`${this.prefix}:${index}`, "-inf", Math.floor(now), "LIMIT", 0, Math.max(1, Math.floor(limit)));
  }

  /** A tenant's unfinished tasks per queue (what its quotas count). */
  async tenantUsage(tenant: string): Promise<{ queues: Map<string, number>; tasks: number }> {
    const h = await this.redis.hgetall(`${this.prefix}:tq:${tenant}`);
    const queues = new Map<string, number>();
    for (const [q, n] of Object.entries(h)) if (q !== "*") queues.set(q, Number(n));
    return { queues, tasks: Number(h["*"] ?? 0) };
  }

  /**
   * A task's history after sequence `afterSeq`, each event with the task's snapshot after it
   * (folded over the immutable spec). Empty when the task is unknown. A subscriber (see
   * {@link onEvent}) that passes the last sequence it saw reads only the new entries: the folded
   * state of watched tasks is cached.
   */
  async events(id: string, afterSeq: number): Promise<TaskEvent[]> {
    const cached = afterSeq > 0 ? this.folded.get(id) : undefined;
    if (cached !== undefined && cached.seq === afterSeq) {
      const r = await this.readEvents(id, afterSeq, false);
      if (r === undefined) return [];
      // Contiguous after the cached state (nothing trimmed in between): fold only the tail.
      if (r.entries.length === 0) return [];
      if (r.entries[0]?.n === afterSeq + 1) {
        const { events, state } = foldEvents(cached.task, r.entries, r.result);
        this.cacheFold(id, state, r.entries);
        return events;
      }
    }
    const r = await this.readEvents(id, 0, true);
    if (r === undefined) return [];
    // The entries start at sequence 2 unless the list was trimmed; the first event is rebuilt
    // from the hash.
    const entries = (r.entries[0]?.n ?? 2) === 2 ? [submitEntry(r.stored.hash), ...r.entries] : r.entries;
    const first = entries[0] as EventEntry;
    const { events, state } = foldEvents(foldBase(taskFromStored(r.stored), first.n), entries, r.result);
    this.cacheFold(id, state, entries);
    return events.filter((e) => e.sequence > BigInt(afterSeq));
  }

  /**
   * Remembers the folded state of a task that has subscribers (the watchers that call events()
   * again on each notification); dropped when its last subscriber leaves. Bounded, since
   * snapshots hold the payload.
   */
  private cacheFold(id: string, state: Task, entries: readonly { n: number }[]): void {
    const last = entries[entries.length - 1];
    if (last === undefined || !this.channels.has(this.channel(id))) return;
    this.folded.delete(id);
    if (this.folded.size >= FOLD_CACHE_SIZE) {
      const oldest = this.folded.keys().next();
      if (oldest.done !== true) this.folded.delete(oldest.value);
    }
    this.folded.set(id, { seq: last.n, task: state });
  }

  private async readEvents(id: string, fromSeq: number, full: boolean) {
    const reply = await this.timed("Events", this.redis.tmEvents(this.queuesKey, ...this.header("", 0), id, fromSeq, full ? "1" : "0"));
    if (reply === null || reply === false) return undefined;
    const a = arr(reply);
    const s = stored(a[0]);
    this.remember(s.id, s.queue);
    // The stored entries, then the ones the hash implies (see task-codec.ts impliedEntries).
    const entries = arr(a[1]).map((e) => parseEventEntry(str(e)));
    const lastStored = entries[entries.length - 1]?.n ?? 0;
    for (const e of impliedEntries(s.hash)) if (e.n > fromSeq && e.n > lastStored) entries.push(e);
    return {
      stored: s,
      result: s.result === null ? undefined : (JSON.parse(s.result) as JsonObject),
      entries,
    };
  }

  /**
   * Depths of every queue (see {@link queues}): queued, running, delayed, retry wait, dead,
   * oldest queued age, and whether it is paused.
   */
  /** Reports how long a script call took (the Redis latency metric). */
  private timed<T>(op: string, call: Promise<T>): Promise<T> {
    const onCall = this.onRedisCall;
    if (onCall === undefined) return call;
    const started = performance.now();
    const done = (): void => onCall(op, (performance.now() - started) / 1000);
    call.then(done, done);
    return call;
  }

  /** Changes the aging rate (live configuration); affects tasks made ready from now on. */
  setAgingMsPerLevel(ms: number): void {
    this.aging = ms;
  }

  async stats(now: number): Promise<QueueStats[]> {
    const names = await this.queues();
    return Promise.all(
      names.map(async (name) => {
        const k = this.keys(name);
        const r = arr(
          await this.timed("Stats", this.redis.tmStats(k.running, k.delayed, k.dead, k.rw, k.paused, ...this.header(name, now))),
        ).map(int);
        const [queued = 0, running = 0, waiting = 0, retryWait = 0, dead = 0, oldest = -1, paused = 0] = r;
        const s = create(QueueStatsSchema, {
          name,
          queued: BigInt(queued),
          running: BigInt(running),
          delayed: BigInt(Math.max(0, waiting - retryWait)),
          retryWait: BigInt(retryWait),
          dead: BigInt(dead),
          paused: paused === 1,
        });
        if (oldest >= 0) s.oldestQueuedAge = durationFromMs(Math.max(0, Math.floor(now) - oldest));
        return s;
      }),
    );
  }

  /**
   * Calls `listener` with the sequence number of each new event of task `id`, through one shared
   * subscriber connection (created on first use). After the subscriber reconnects every listener
   * gets 0: events may have been missed, read again. Subscribe, await `ready`, then read history.
   */
  onEvent(id: string, listener: (seq: number) => void): Unsubscribe {
    if (this.closed) throw new Error("task store is closed");
    const sub = this.subscriber();
    const channel = this.channel(id);
    let ch = this.channels.get(channel);
    if (ch === undefined) {
      const ready = sub.subscribe(channel).then(
        () => undefined,
        (err: unknown) => {
          this.logger.warn({ err, taskId: id }, "event subscription failed");
        },
      );
      ch = { listeners: new Set(), ready };
      this.channels.set(channel, ch);
    }
    const entry = ch;
    // A listener added twice must be removable twice: wrap it so each subscription is distinct.
    const own = (seq: number): void => listener(seq);
    entry.listeners.add(own);
    let done = false;
    const off = (): void => {
      if (done) return;
      done = true;
      entry.listeners.delete(own);
      if (entry.listeners.size === 0 && this.channels.get(channel) === entry) {
        this.channels.delete(channel);
        this.folded.delete(id);
        if (!this.closed) {
          sub.unsubscribe(channel).catch((err: unknown) => {
            this.logger.debug({ err, taskId: id }, "event unsubscribe failed");
          });
        }
      }
    };
    return Object.assign(off, { ready: entry.ready });
  }

  private channel(id: string): string {
    return `${this.prefix}:ev:${id}`;
  }

  private subscriber(): Redis {
    if (this.sub === undefined) {
      const sub = this.redis.duplicate();
      let connectedOnce = false;
      sub.on("message", (channel: string, message: string) => {
        const ch = this.channels.get(channel);
        if (ch === undefined) return;
        const seq = Number(message);
        for (const l of [...ch.listeners]) this.safeCall(l, Number.isFinite(seq) ? seq : 0);
      });
      sub.on("ready", () => {
        if (connectedOnce) {
          for (const ch of this.channels.values()) for (const l of [...ch.listeners]) this.safeCall(l, 0);
        }
        connectedOnce = true;
      });
      sub.on("error", (err: unknown) => {
        this.logger.warn({ err }, "event subscriber error");
      });
      this.sub = sub;
    }
    return this.sub;
  }

  private safeCall(listener: (seq: number) => void, seq: number): void {
    try {
      listener(seq);
    } catch (err) {
      this.logger.error({ err }, "task event listener threw");
    }
  }

  /**
   * Closes the subscriber connection and the submit connection of `waitReplicas` (the main
   * connection belongs to the caller). Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.channels.clear();
    this.folded.clear();
    const sub = this.sub;
    this.sub = undefined;
    if (sub !== undefined) {
      await sub.quit().catch(() => sub.disconnect());
    }
    const submitRedis = this.submitRedis;
    if (submitRedis !== this.redis) await submitRedis.quit().catch(() => submitRedis.disconnect());
  }

  private async queuesOf(ids: readonly string[]): Promise<(string | undefined)[]> {
    const { groups } = await this.byQueue(ids.map((id) => ({ id })));
    const out: (string | undefined)[] = ids.map(() => undefined);
    for (const [q, g] of groups) for (const { index } of g) out[index] = q;
    return out;
  }
}
