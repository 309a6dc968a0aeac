import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { CronExpressionParser } from "cron-parser";
import type { ClientContext, Redis, RedisValue, Result } from "ioredis";
import { defineScripts } from "./lua-scripts.js";
import { ScheduleSchema, type Schedule } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SubmitTaskRequestSchema, type SubmitTaskRequest } from "../../gen/taskmesh/v1/task_pb.js";
import { invalidArgument } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import { toNewTask, type SubmitDefaults } from "./submit.js";
import type { NewTask, TaskStore } from "./task-store.js";

// ---- specs: when a schedule fires -------------------------------------------------------------

/** Shortest interval a schedule may have. */
export const MIN_INTERVAL_MS = 1000;
/** Longest interval a schedule may have (a year and a day). */
export const MAX_INTERVAL_MS = 366 * 24 * 3600 * 1000;
const MAX_CRON_LENGTH = 200;

/**
 * When a schedule fires: a cron expression evaluated in an IANA time zone, or a fixed interval.
 * Cron has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), or is one
 * of cron-parser's aliases (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`, …). When both
 * day fields are restricted, a day matching either fires (classic cron). Across DST changes:
 * a wall-clock time skipped by spring-forward fires once, an hour later (02:30 → 03:30); a time
 * repeated by fall-back fires once, at its first occurrence; hourly and finer expressions follow
 * real time (23 or 25 runs of `0 * * * *` on those days).
 */
export type ScheduleSpec =
  | { kind: "cron"; cron: string; timeZone: string }
  | { kind: "interval"; intervalMs: number; timeZone: string };

/** Validates an IANA time zone ("" means UTC); throws INVALID_ARGUMENT naming `time_zone`. */
export function checkTimeZone(timeZone: string): string {
  if (timeZone === "") return "UTC";
  if (timeZone.length > 100) throw invalidArgument("time_zone", "too long");
  try {
    new Intl.DateTimeFormat("en-US", { timeZone });
  } catch {
    throw invalidArgument("time_zone", `unknown time zone ${JSON.stringify(timeZone)}`);
  }
  return timeZone;
}

function nextCron(cron: string, timeZone: string, afterMs: number): number | undefined {
  const expr = CronExpressionParser.parse(cron, { tz: timeZone, currentDate: afterMs });
  if (!expr.hasNext()) return undefined;
  return expr.next().getTime();
}

/**
 * Validates a cron expression in a time zone; throws INVALID_ARGUMENT naming `cron` when it does
 * not parse or never fires after `now`.
 */
export function checkCron(cron: string, timeZone: string, now: number): string {
  const c = cron.trim();
  if (c === "") throw invalidArgument("cron", "is empty");
  if (c.length > MAX_CRON_LENGTH) throw invalidArgument("cron", `longer than ${MAX_CRON_LENGTH} characters`);
  // cron-parser fills missing fields with `*`; a truncated expression is more likely a mistake.
  const fields = c.split(/\s+/).length;
  if (!c.startsWith("@") && fields !== 5 && fields !== 6) {
    throw invalidArgument("cron", `needs 5 fields (or 6 with seconds first), got ${fields}`);
  }
  let next: number | undefined;
  try {
    next = nextCron(c, timeZone, now);
  } catch (err) {
    throw invalidArgument("cron", err instanceof Error ? err.message : "does not parse");
  }
  if (next === undefined) throw invalidArgument("cron", "never fires");
  return c;
}

function durationToMs(d: { seconds: bigint; nanos: number }): number {
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

/**
 * Reads and validates the spec of a CreateScheduleRequest-like message; throws INVALID_ARGUMENT
 * naming `cron`, `interval` or `time_zone`.
 */
export function specFromRequest(
  req: { spec: { case: "cron"; value: string } | { case: "interval"; value: { seconds: bigint; nanos: number } } | { case: undefined; value?: undefined }; timeZone: string },
  now: number,
): ScheduleSpec {
  const timeZone = checkTimeZone(req.timeZone);
  switch (req.spec.case) {
    case "cron":
      return { kind: "cron", cron: checkCron(req.spec.value, timeZone, now), timeZone };
    case "interval": {
      const d = req.spec.value;
      if (d.seconds < 0n || d.nanos < 0) throw invalidArgument("interval", "must not be negative");
      const ms = durationToMs(d);
      if (ms < MIN_INTERVAL_MS) throw invalidArgument("interval", `must be at least ${MIN_INTERVAL_MS / 1000} s`);
      if (ms > MAX_INTERVAL_MS) throw invalidArgument("interval", `must be at most ${MAX_INTERVAL_MS / 1000} s`);
      return { kind: "interval", intervalMs: ms, timeZone };
    }
    case undefined:
      throw invalidArgument("cron", "set cron or interval");
  }
}

/**
 * The first run of a schedule created (or resumed) at `now`: the first cron occurrence strictly
 * after `now`, or `now + interval`. Undefined when a cron expression never fires again.
 */
export function firstRun(spec: ScheduleSpec, now: number): number | undefined {
  return spec.kind === "cron" ? nextCron(spec.cron, spec.timeZone, now) : now + spec.intervalMs;
}

/**
 * The run after the tick scheduled at `tickMs` fired at `now` (`tickMs` ≤ `now`): the first
 * occurrence strictly after `now`. Intervals stay on their grid (`tickMs + k·interval`), so a
 * late tick does not shift later ones. Occurrences between `tickMs` and `now` are skipped: that
 * is the misfire policy "fire once" — after a gap, one catch-up task, then back on schedule.
 */
export function followingRun(spec: ScheduleSpec, tickMs: number, now: number): number | undefined {
  if (spec.kind === "cron") return nextCron(spec.cron, spec.timeZone, Math.max(tickMs, now));
  const after = Math.max(tickMs, now);
  return tickMs + (Math.floor((after - tickMs) / spec.intervalMs) + 1) * spec.intervalMs;
}

// ---- the store --------------------------------------------------------------------------------

/** One schedule as stored. */
export interface ScheduleRecord {
  id: string;
  tenant: string;
  spec: ScheduleSpec;
  /** The task every tick submits (without the per-tick label and idempotency key). */
  template: SubmitTaskRequest;
  paused: boolean;
  createdMs: number;
  /** Absent while paused, or when a cron expression never fires again. */
  nextMs?: number | undefined;
  /** When the last tick's task was submitted. */
  lastMs?: number | undefined;
  lastTaskId: string;
}

/** A tick claimed by {@link ScheduleStore.claimDue} or {@link ScheduleStore.recover}. */
export interface ClaimedTick {
  id: string;
  tenant: string;
  /** The scheduled time of the tick (ms); with the id it makes the task's idempotency key. */
  tickMs: number;
  /** Template JSON as stored. */
  templateJson: string;
}

/** Options of {@link ScheduleStore}. */
export interface ScheduleStoreOptions {
  /** A connection without ioredis' `keyPrefix` (scripts build keys from `prefix`). */
  redis: Redis;
  /** Key prefix: must be the task store's (recovery reads its idempotency keys). @default "tm" */
  prefix?: string | undefined;
  /** Schedules one tenant may have. @default 10000 */
  maxPerTenant?: number | undefined;
  logger: Logger;
}

/** Result of {@link ScheduleStore.create}. */
export type CreateResult = "created" | "exists" | "limit";

const SCRIPTS = {
  schCreate: { file: "schedule-create", keys: 3 },
  schPause: { file: "schedule-pause", keys: 2 },
  schResume: { file: "schedule-resume", keys: 2 },
  schDue: { file: "schedule-due", keys: 1, readOnly: true },
  schClaim: { file: "schedule-claim", keys: 2 },
  schRecover: { file: "schedule-recover", keys: 1 },
  schFinish: { file: "schedule-finish", keys: 1 },
} as const;

declare module "ioredis" {
  // The schedule store's Lua scripts (services/scheduler/lua/schedule-*.lua).
  interface RedisCommander<Context extends ClientContext = { type: "default" }> {
    schCreate(...args: RedisValue[]): Result<unknown, Context>;
    schPause(...args: RedisValue[]): Result<unknown, Context>;
    schResume(...args: RedisValue[]): Result<unknown, Context>;
    schDue(...args: RedisValue[]): Result<unknown, Context>;
    schClaim(...args: RedisValue[]): Result<unknown, Context>;
    schRecover(...args: RedisValue[]): Result<unknown, Context>;
    schFinish(...args: RedisValue[]): Result<unknown, Context>;
  }
}

function arr(x: unknown): unknown[] {
  if (!Array.isArray(x)) throw new Error("unexpected schedule script reply");
  return x;
}

function str(x: unknown): string {
  if (typeof x === "string") return x;
  if (typeof x === "number") return String(x);
  throw new Error("unexpected schedule script reply");
}

function optMs(x: string | undefined): number | undefined {
  if (x === undefined || x === "") return undefined;
  const n = Number(x);
  return Number.isFinite(n) ? n : undefined;
}

/** Schedule ids: caller-chosen or ULIDs; no `:` (keys and pend members are `:`-separated). */
export const SCHEDULE_ID = /^[A-Za-z0-9_.-]{1,100}$/;
const MAX_PAGE = 1000;

/** Spec fields of the hash (shared by create and the due reader). */
function specFields(spec: ScheduleSpec): string[] {
  return spec.kind === "cron"
    ? ["cron", spec.cron, "tz", spec.timeZone]
    : ["iv", String(spec.intervalMs), "tz", spec.timeZone];
}

function specFrom(cron: string, iv: string, tz: string): ScheduleSpec {
  const timeZone = tz === "" ? "UTC" : tz;
  if (cron !== "") return { kind: "cron", cron, timeZone };
  return { kind: "interval", intervalMs: Number(iv), timeZone };
}

/** Parses a stored task template (tolerating fields a newer replica may have written). */
export function parseTemplate(json: string): SubmitTaskRequest {
  return fromJsonString(SubmitTaskRequestSchema, json, { ignoreUnknownFields: true });
}

/**
 * Recurring schedules in Redis, under the scheduler's prefix `P`:
 * - `P:sch:s:<tenant>:<id>` HASH: `id`, `ten`, `cron` or `iv` (interval ms), `tz`, `task` (the
 *   SubmitTaskRequest template as protobuf JSON), `paused` ("0"/"1"), `cr` (created ms), `next`
 *   (next run ms; absent while paused), `last` (ms the last tick's task was submitted), `ltid`
 *   (its task id), `ltick` (its scheduled ms).
 *   Ids are scoped by tenant: two tenants may use the same caller-chosen id, and neither can
 *   learn that the other's exists (another tenant's schedule is simply not there: NOT_FOUND).
 * - `P:sch:due` ZSET of refs `<tenant>:<id>` scored by next run ms; paused schedules are not in it.
 * - `P:sch:pend` ZSET of claimed, not yet finished ticks `<tenant>:<id>:<tick ms>` scored by
 *   their lease deadline.
 * - `P:sch:tn:<tenant>` ZSET (all scores 0) of the tenant's ids, listed in id order.
 * Every write is one Lua script (or MULTI), so the due set always agrees with the hashes.
 */
export class ScheduleStore {
  /** The Redis connection (shared with the task store). */
  readonly redis: Redis;
  /** The key prefix. */
  readonly prefix: string;
  private readonly maxPerTenant: number;
  private readonly logger: Logger;

  constructor(opts: ScheduleStoreOptions) {
    this.redis = opts.redis;
    this.prefix = opts.prefix ?? "tm";
    this.maxPerTenant = opts.maxPerTenant ?? 10_000;
    this.logger = opts.logger.child({ component: "schedule-store" });
    defineScripts(this.redis, "schedule-lib", SCRIPTS, "ScheduleStore");
  }

  private hashKey(tenant: string, id: string): string {
    return `${this.prefix}:sch:s:${tenant}:${id}`;
  }

  private get dueKey(): string {
    return `${this.prefix}:sch:due`;
  }

  private get pendKey(): string {
    return `${this.prefix}:sch:pend`;
  }

  private tenantKey(tenant: string): string {
    return `${this.prefix}:sch:tn:${tenant}`;
  }

  private header(now: number): RedisValue[] {
    return [this.prefix, String(Math.floor(now))];
  }

  /** Stores a new schedule due at `nextMs`. */
  async create(rec: Omit<ScheduleRecord, "paused" | "nextMs" | "lastMs" | "lastTaskId">, nextMs: number): Promise<CreateResult> {
    const r = await this.redis.schCreate(
      this.hashKey(rec.tenant, rec.id),
      this.dueKey,
      this.tenantKey(rec.tenant),
      ...this.header(rec.createdMs),
      `${rec.tenant}:${rec.id}`,
      rec.id,
      String(Math.floor(nextMs)),
      this.maxPerTenant,
      "id",
      rec.id,
      "ten",
      rec.tenant,
      ...specFields(rec.spec),
      "task",
      toJsonString(SubmitTaskRequestSchema, rec.template),
      "paused",
      "0",
      "cr",
      String(Math.floor(rec.createdMs)),
    );
    const n = Number(r);
    return n === 1 ? "created" : n === 0 ? "exists" : "limit";
  }

  private fromHash(h: Record<string, string>): ScheduleRecord | undefined {
    if (h.id === undefined || h.ten === undefined) return undefined;
    return {
      id: h.id,
      tenant: h.ten,
      spec: specFrom(h.cron ?? "", h.iv ?? "", h.tz ?? ""),
      template: parseTemplate(h.task ?? "{}"),
      paused: h.paused === "1",
      createdMs: Number(h.cr ?? 0),
      nextMs: optMs(h.next),
      lastMs: optMs(h.last),
      lastTaskId: h.ltid ?? "",
    };
  }

  /** One of the tenant's schedules, or undefined. */
  async get(tenant: string, id: string): Promise<ScheduleRecord | undefined> {
    if (!SCHEDULE_ID.test(id)) return undefined;
    return this.fromHash(await this.redis.hgetall(this.hashKey(tenant, id)));
  }

  /**
   * A page of the tenant's schedules in id order (ULIDs: creation order). The page token is
   * opaque (base64url of the last id); empty means the end. Throws INVALID_ARGUMENT naming
   * `page_token` when it is malformed.
   */
  async list(tenant: string, pageSize: number, pageToken: string): Promise<{ schedules: ScheduleRecord[]; nextPageToken: string }> {
    const size = Math.max(1, Math.min(Math.floor(pageSize), MAX_PAGE));
    let min = "-";
    if (pageToken !== "") {
      const after = Buffer.from(pageToken, "base64url").toString("utf8");
      if (!SCHEDULE_ID.test(after)) throw invalidArgument("page_token", "is malformed");
      min = `(${after}`;
    }
    const ids = await this.redis.zrangebylex(this.tenantKey(tenant), min, "+", "LIMIT", 0, size + 1);
    const page = ids.slice(0, size);
    const hashes = await Promise.all(page.map((id) => this.redis.hgetall(this.hashKey(tenant, id))));
    const schedules: ScheduleRecord[] = [];
    for (const h of hashes) {
      const r = this.fromHash(h);
      if (r !== undefined) schedules.push(r);
    }
    const last = page[page.length - 1];
    return {
      schedules,
      nextPageToken: ids.length > size && last !== undefined ? Buffer.from(last, "utf8").toString("base64url") : "",
    };
  }

  /** Deletes a schedule and everything about it; false when it did not exist. */
  async delete(tenant: string, id: string): Promise<boolean> {
    if (!SCHEDULE_ID.test(id)) return false;
    const res = await this.redis
      .multi()
      .del(this.hashKey(tenant, id))
      .zrem(this.dueKey, `${tenant}:${id}`)
      .zrem(this.tenantKey(tenant), id)
      .exec();
    const del = res?.[0];
    if (del === undefined || del[0] !== null) throw del?.[0] ?? new Error("schedule delete failed");
    // A tick claimed before the delete may still submit its task; recover.lua drops the rest.
    return Number(del[1]) === 1;
  }

  /** Pauses a schedule (no-op when paused); false when it does not exist. */
  async pause(tenant: string, id: string): Promise<boolean> {
    if (!SCHEDULE_ID.test(id)) return false;
    const r = await this.redis.schPause(this.hashKey(tenant, id), this.dueKey, ...this.header(0), `${tenant}:${id}`);
    return Number(r) === 1;
  }

  /**
   * Resumes a paused schedule with its next run recomputed from `now` (ticks missed while paused
   * are not run); a no-op on a running schedule. False when it does not exist.
   */
  async resume(tenant: string, id: string, now: number): Promise<boolean> {
    const rec = await this.get(tenant, id);
    if (rec === undefined) return false;
    if (!rec.paused) return true;
    const next = firstRun(rec.spec, now);
    const r = await this.redis.schResume(
      this.hashKey(tenant, id),
      this.dueKey,
      ...this.header(now),
      `${tenant}:${id}`,
      next === undefined ? "" : String(Math.floor(next)),
    );
    return Number(r) === 1;
  }

  /**
   * Claims up to `limit` ticks due at `now`: each schedule whose next run is ≤ now fires ONE tick
   * (the scheduled time it was due at, however many occurrences were missed) and moves its next
   * run to the first occurrence after `now`. The claim is a compare-and-set on the stored next
   * run, so concurrent callers (replicas, an old and a new leader) never claim a tick twice.
   * Claimed ticks stay pending until {@link finish}; after `leaseMs` {@link recover} hands them
   * out again.
   */
  async claimDue(now: number, limit: number, leaseMs: number): Promise<{ ticks: ClaimedTick[]; scanned: number }> {
    now = Math.floor(now);
    const due = arr(await this.redis.schDue(this.dueKey, ...this.header(now), Math.floor(limit))).map(str);
    const args: RedisValue[] = [];
    let scanned = 0;
    for (let i = 0; i + 4 < due.length; i += 5) {
      scanned++;
      const [ref, next, cron, iv, tz] = due.slice(i, i + 5) as [string, string, string, string, string];
      if (next === "" || (cron === "" && iv === "")) {
        args.push(ref, next, ""); // the claim script cleans up a stale entry
        continue;
      }
      let following: number | undefined;
      try {
        following = followingRun(specFrom(cron, iv, tz), Number(next), now);
      } catch (err) {
        // A stored spec that no longer parses (e.g. a time zone dropped from the ICU data):
        // fire this tick and stop; the schedule stays visible, with no next run.
        this.logger.error({ err, ref }, "schedule spec does not evaluate; it will not fire again");
      }
      args.push(ref, next, following === undefined ? "" : String(Math.floor(following)));
    }
    if (args.length === 0) return { ticks: [], scanned };
    const reply = await this.redis.schClaim(this.dueKey, this.pendKey, ...this.header(now), String(now + leaseMs), ...args);
    return { ticks: arr(reply).map(tickFrom), scanned };
  }

  /** Re-claims (for `leaseMs` more) up to `limit` ticks whose claimer did not finish them. */
  async recover(now: number, limit: number, leaseMs: number): Promise<ClaimedTick[]> {
    now = Math.floor(now);
    const reply = await this.redis.schRecover(this.pendKey, ...this.header(now), String(now + leaseMs), Math.floor(limit));
    return arr(reply).map(tickFrom);
  }

  /** Marks claimed ticks done, recording each one's task as the schedule's last run. */
  async finish(done: readonly { tick: ClaimedTick; taskId: string }[], now: number): Promise<void> {
    if (done.length === 0) return;
    const args = done.flatMap((d) => [`${d.tick.tenant}:${d.tick.id}`, String(d.tick.tickMs), d.taskId]);
    await this.redis.schFinish(this.pendKey, ...this.header(now), ...args);
  }
}

function tickFrom(x: unknown): ClaimedTick {
  const [ref, tick, tenant, templateJson] = arr(x).map(str) as [string, string, string, string];
  return { id: ref.slice(tenant.length + 1), tenant, tickMs: Number(tick), templateJson };
}

/** The Schedule message of a stored schedule. */
export function scheduleMessage(r: ScheduleRecord): Schedule {
  return create(ScheduleSchema, {
    id: r.id,
    tenant: r.tenant,
    spec:
      r.spec.kind === "cron"
        ? { case: "cron", value: r.spec.cron }
        : {
            case: "interval",
            value: { seconds: BigInt(Math.floor(r.spec.intervalMs / 1000)), nanos: (r.spec.intervalMs % 1000) * 1e6 },
          },
    timeZone: r.spec.timeZone,
    task: r.template,
    paused: r.paused,
    lastTaskId: r.lastTaskId,
    createdAt: timestampFromMs(r.createdMs),
    ...(r.nextMs !== undefined ? { nextRunAt: timestampFromMs(r.nextMs) } : {}),
    ...(r.lastMs !== undefined ? { lastRunAt: timestampFromMs(r.lastMs) } : {}),
  });
}

// ---- ticks become tasks -----------------------------------------------------------------------

/** The idempotency key of the task of one tick: a retried tick finds the first task. */
export function tickIdempotencyKey(scheduleId: string, tickMs: number): string {
  return `schedule:${scheduleId}:${Math.floor(tickMs)}`;
}

/**
 * The task one tick submits: the template, the schedule's tenant, the label `schedule_id=<id>`
 * and the idempotency key {@link tickIdempotencyKey}. Validated by `toNewTask` (field names
 * prefixed with `path`); `knownTypes` is the set of task types accepted.
 */
export function taskForTick(
  template: SubmitTaskRequest,
  scheduleId: string,
  tenant: string,
  tickMs: number,
  knownTypes: ReadonlySet<string>,
  defaults: SubmitDefaults,
  now: number,
  path = "",
): NewTask {
  const req: SubmitTaskRequest = {
    ...template,
    labels: { ...template.labels, schedule_id: scheduleId },
    idempotencyKey: tickIdempotencyKey(scheduleId, tickMs),
  };
  return toNewTask(req, tenant, knownTypes, defaults, now, path);
}

/** Options of {@link ScheduleTicker}. */
export interface ScheduleTickerOptions {
  schedules: ScheduleStore;
  /** The task store, on the same Redis and prefix as `schedules`. */
  tasks: TaskStore;
  defaults: () => SubmitDefaults;
  /**
   * How long a claimed tick may stay unfinished before another tick() submits it again (its
   * claimer is presumed dead). A slow claimer is harmless: both submit with the same key.
   * @default 30000
   */
  leaseMs?: number | undefined;
  /** Ticks claimed per script call. @default 500 */
  batch?: number | undefined;
  logger: Logger;
}

/** What one {@link ScheduleTicker.tick} did. */
export interface TickResult {
  /** Ticks handled (claimed or recovered). */
  ticks: number;
  /** Tasks created (a retried tick that found its task counts in `ticks` only). */
  created: number;
  /** Queues that received tasks, by `<queue>\n<tenant>` (their lanes): kick the dispatcher for them. */
  lanes: Map<string, { queue: string; tenant: string }>;
}

/** Most claim rounds one tick() makes before leaving the rest to the next call. */
const MAX_ROUNDS = 20;

/**
 * Turns due schedule ticks into tasks. Call {@link tick} from the leader's maintenance loop
 * (every 100 ms or so); calling it from several replicas at once is safe too: each tick yields
 * exactly one task, because the claim is a compare-and-set and the task carries the idempotency
 * key `schedule:<id>:<tickMs>` (a tick re-submitted after a crash finds the first task).
 */
export class ScheduleTicker {
  private readonly schedules: ScheduleStore;
  private readonly tasks: TaskStore;
  private readonly defaults: () => SubmitDefaults;
  private readonly leaseMs: number;
  private readonly batch: number;
  private readonly logger: Logger;

  constructor(opts: ScheduleTickerOptions) {
    this.schedules = opts.schedules;
    this.tasks = opts.tasks;
    this.defaults = opts.defaults;
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.batch = opts.batch ?? 500;
    this.logger = opts.logger.child({ component: "schedule-ticker" });
  }

  /** Submits the task of every tick due at `now` (ms), and of ticks abandoned by a dead claimer. */
  async tick(now: number): Promise<TickResult> {
    const result: TickResult = { ticks: 0, created: 0, lanes: new Map() };
    const recovered = await this.schedules.recover(now, this.batch, this.leaseMs);
    if (recovered.length > 0) {
      this.logger.warn({ count: recovered.length }, "re-submitting schedule ticks a claimer left unfinished");
      await this.submit(recovered, now, result);
    }
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const { ticks, scanned } = await this.schedules.claimDue(now, this.batch, this.leaseMs);
      await this.submit(ticks, now, result);
      if (scanned < this.batch) break;
    }
    return result;
  }

  private async submit(ticks: readonly ClaimedTick[], now: number, result: TickResult): Promise<void> {
    if (ticks.length === 0) return;
    const defaults = this.defaults();
    const made: { tick: ClaimedTick; task: NewTask }[] = [];
    const failed: { tick: ClaimedTick; taskId: string }[] = [];
    for (const tick of ticks) {
      try {
        const template = parseTemplate(tick.templateJson);
        // The type was checked at CreateSchedule; a type whose workers are away right now still
        // gets its task, which waits in the queue like any other.
        const task = taskForTick(template, tick.id, tick.tenant, tick.tickMs, new Set([template.type]), defaults, now);
        made.push({ tick, task });
      } catch (err) {
        this.logger.error({ err, scheduleId: tick.id, tenant: tick.tenant }, "schedule template no longer valid; tick skipped");
        failed.push({ tick, taskId: "" });
      }
    }
    const stored = made.length > 0 ? await this.tasks.submit(made.map((m) => m.task), now) : [];
    const done = made.map((m, i) => {
      const s = stored[i];
      if (s !== undefined && !s.existing) {
        result.created++;
        result.lanes.set(`${m.task.queue}\n${m.task.tenant}`, { queue: m.task.queue, tenant: m.task.tenant });
      }
      return { tick: m.tick, taskId: s?.task.id ?? "" };
    });
    await this.schedules.finish([...done, ...failed], now);
    result.ticks += ticks.length;
    if (made.length > 0) this.logger.debug({ count: made.length }, "schedule ticks submitted");
  }
}
