import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { Redis } from "ioredis";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import {
  CreateScheduleRequestSchema,
  ScheduleService,
  type CreateScheduleRequest,
} from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SubmitTaskRequestSchema, TaskStatus, type SubmitTaskRequest, type Task } from "../../gen/taskmesh/v1/task_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { BUILTIN_TASK_TYPES, TENANT_HEADER } from "../../lib/task-types.js";
import { scheduleRoutes } from "../../services/scheduler/schedule-service.js";
import { ScheduleStore, ScheduleTicker, taskForTick } from "../../services/scheduler/schedules.js";
import { DEFAULT_SUBMIT } from "../../services/scheduler/submit.js";
import { TaskStore } from "../../services/scheduler/task-store.js";
import { uniquePrefix } from "../support/ids.js";

const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;
const LEASE = 30_000;

/** One scheduler replica's view: its own Redis connection, stores and ticker. */
interface Replica {
  redis: Redis;
  tasks: TaskStore;
  schedules: ScheduleStore;
  ticker: ScheduleTicker;
}

let prefix: string;
let clock: number;
let replicas: Replica[];
let main: Replica;

function replica(): Replica {
  const redis = new Redis(inject("redisUrl"));
  const logger = silentLogger();
  const tasks = new TaskStore({ redis, prefix, logger });
  const schedules = new ScheduleStore({ redis, prefix, logger });
  const ticker = new ScheduleTicker({ schedules, tasks, defaults: () => DEFAULT_SUBMIT, leaseMs: LEASE, logger });
  const r = { redis, tasks, schedules, ticker };
  replicas.push(r);
  return r;
}

function client(tenant: string): Client<typeof ScheduleService> {
  const routes = scheduleRoutes({
    schedules: main.schedules,
    knownTypes: () => new Set([...BUILTIN_TASK_TYPES, "report"]),
    defaults: () => DEFAULT_SUBMIT,
    now: () => clock,
    logger: silentLogger(),
  });
  const transport = createRouterTransport(routes, {
    transport: {
      interceptors: [
        (next) => (req) => {
          req.header.set(TENANT_HEADER, tenant);
          return next(req);
        },
      ],
    },
  });
  return createClient(ScheduleService, transport);
}

function everySeconds(s: number, over: { scheduleId?: string; task?: SubmitTaskRequest } = {}): CreateScheduleRequest {
  return create(CreateScheduleRequestSchema, {
    spec: { case: "interval", value: { seconds: BigInt(s), nanos: 0 } },
    task: create(SubmitTaskRequestSchema, { type: "noop", payload: { n: 1 }, labels: { team: "ops" } }),
    ...over,
  });
}

/** The tenant's tasks created by one schedule, oldest first. */
async function tasksOf(tenant: string, scheduleId: string): Promise<Task[]> {
  const page = await main.tasks.list(tenant, { label: ["schedule_id", scheduleId] }, 1000, "");
  return page.tasks.reverse();
}

async function expectCode(p: Promise<unknown>, code: Code, field?: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    const e = err as ConnectError;
    expect(Code[e.code]).toBe(Code[code]);
    if (field !== undefined) expect(e.rawMessage).toMatch(new RegExp(`^${field.replace(/[.[\]]/g, "\\$&")}:`));
    return;
  }
  throw new Error(`expected ${Code[code]}`);
}

async function prefixKeys(redis: Redis, pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== "0");
  return keys;
}

beforeEach(() => {
  prefix = uniquePrefix("sch");
  clock = T0;
  replicas = [];
  main = replica();
});

afterEach(async () => {
  const keys = await prefixKeys(main.redis, `${prefix}:*`);
  if (keys.length > 0) await main.redis.del(...keys);
  for (const r of replicas) {
    await r.tasks.close();
    await r.redis.quit();
  }
});

describe("ScheduleService", () => {
  it("creates, gets, lists, pauses, resumes and deletes a schedule", async () => {
    const c = client("acme");
    const s = await c.createSchedule(everySeconds(60, { scheduleId: "nightly" }));
    expect(s.id).toBe("nightly");
    expect(s.tenant).toBe("acme");
    expect(s.spec).toEqual({ case: "interval", value: expect.objectContaining({ seconds: 60n, nanos: 0 }) });
    expect(s.timeZone).toBe("UTC");
    expect(s.paused).toBe(false);
    expect(s.task?.type).toBe("noop");
    expect(s.task?.payload).toEqual({ n: 1 });
    expect(s.task?.labels).toEqual({ team: "ops" });
    expect(timestampMs(s.createdAt!)).toBe(T0);
    expect(timestampMs(s.nextRunAt!)).toBe(T0 + 60_000);
    expect(s.lastRunAt).toBeUndefined();
    expect(await c.getSchedule({ scheduleId: "nightly" })).toEqual(s);

    const cron = await c.createSchedule(
      create(CreateScheduleRequestSchema, {
        spec: { case: "cron", value: "30 2 * * *" },
        timeZone: "Europe/Berlin",
        task: { type: "report" },
      }),
    );
    expect(cron.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/); // a ULID
    expect(cron.timeZone).toBe("Europe/Berlin");
    // T0 is 2023-11-14T22:13:20Z: the next 02:30 in Berlin (CET) is 01:30Z the next day.
    expect(new Date(timestampMs(cron.nextRunAt!)).toISOString()).toBe("2023-11-15T01:30:00.000Z");

    await expectCode(c.createSchedule(everySeconds(5, { scheduleId: "nightly" })), Code.AlreadyExists);

    // Paging, one at a time, then all at once.
    const seen: string[] = [];
    let token = "";
    do {
      const page = await c.listSchedules({ pageSize: 1, pageToken: token });
      expect(page.schedules.length).toBeLessThanOrEqual(1);
      seen.push(...page.schedules.map((x) => x.id));
      token = page.nextPageToken;
    } while (token !== "");
    expect(seen.sort()).toEqual([cron.id, "nightly"].sort());
    expect((await c.listSchedules({})).schedules.map((x) => x.id).sort()).toEqual(seen);
    await expectCode(c.listSchedules({ pageToken: "!!!" }), Code.InvalidArgument, "page_token");

    // Pause: no next run, not due, ticks do nothing.
    clock = T0 + 1000;
    const paused = await c.pauseSchedule({ scheduleId: "nightly" });
    expect(paused.paused).toBe(true);
    expect(paused.nextRunAt).toBeUndefined();
    expect(await main.redis.zscore(`${prefix}:sch:due`, "acme:nightly")).toBeNull();
    expect((await main.ticker.tick(T0 + 10 * HOUR)).created).toBe(1); // only the cron schedule
    expect(await tasksOf("acme", "nightly")).toHaveLength(0);
    expect((await c.pauseSchedule({ scheduleId: "nightly" })).paused).toBe(true); // idempotent

    // Resume: next run recomputed from now.
    clock = T0 + 10 * HOUR + 500;
    const resumed = await c.resumeSchedule({ scheduleId: "nightly" });
    expect(resumed.paused).toBe(false);
    expect(timestampMs(resumed.nextRunAt!)).toBe(clock + 60_000);
    expect(timestampMs((await c.resumeSchedule({ scheduleId: "nightly" })).nextRunAt!)).toBe(clock + 60_000);
    expect((await main.ticker.tick(clock + 60_000)).created).toBe(1);
    expect(await tasksOf("acme", "nightly")).toHaveLength(1);

    // Delete: everything goes.
    await c.deleteSchedule({ scheduleId: "nightly" });
    await c.deleteSchedule({ scheduleId: cron.id });
    await expectCode(c.getSchedule({ scheduleId: "nightly" }), Code.NotFound);
    await expectCode(c.deleteSchedule({ scheduleId: "nightly" }), Code.NotFound);
    await expectCode(c.pauseSchedule({ scheduleId: "nightly" }), Code.NotFound);
    await expectCode(c.resumeSchedule({ scheduleId: "nightly" }), Code.NotFound);
    expect((await c.listSchedules({})).schedules).toEqual([]);
    expect(await prefixKeys(main.redis, `${prefix}:sch:*`)).toEqual([]);
    expect((await main.ticker.tick(T0 + 100 * HOUR)).ticks).toBe(0);
  });

  it("hides one tenant's schedules from another (NOT_FOUND), ids being per tenant", async () => {
    const a = client("acme");
    const b = client("globex");
    await a.createSchedule(everySeconds(10, { scheduleId: "s1" }));
    await expectCode(b.getSchedule({ scheduleId: "s1" }), Code.NotFound);
    await expectCode(b.pauseSchedule({ scheduleId: "s1" }), Code.NotFound);
    await expectCode(b.resumeSchedule({ scheduleId: "s1" }), Code.NotFound);
    await expectCode(b.deleteSchedule({ scheduleId: "s1" }), Code.NotFound);
    expect((await b.listSchedules({})).schedules).toEqual([]);
    // The same id in another tenant is another schedule.
    const theirs = await b.createSchedule(everySeconds(20, { scheduleId: "s1" }));
    expect(theirs.tenant).toBe("globex");
    expect((await a.getSchedule({ scheduleId: "s1" })).spec.value).toEqual(expect.objectContaining({ seconds: 10n }));
    expect((await main.ticker.tick(T0 + 10_000)).created).toBe(1);
    expect(await tasksOf("acme", "s1")).toHaveLength(1);
    expect(await tasksOf("globex", "s1")).toHaveLength(0);
  });

  it("rejects bad specs and templates with INVALID_ARGUMENT naming the field", async () => {
    const c = client("acme");
    const task = create(SubmitTaskRequestSchema, { type: "noop" });
    const cron = (value: string, timeZone = "") =>
      create(CreateScheduleRequestSchema, { spec: { case: "cron", value }, timeZone, task });
    await expectCode(c.createSchedule(cron("61 * * * *")), Code.InvalidArgument, "cron");
    await expectCode(c.createSchedule(cron("every day")), Code.InvalidArgument, "cron");
    await expectCode(c.createSchedule(cron("0 9 * * *", "Mars/Olympus_Mons")), Code.InvalidArgument, "time_zone");
    await expectCode(
      c.createSchedule(create(CreateScheduleRequestSchema, { spec: { case: "interval", value: { nanos: 500_000_000 } }, task })),
      Code.InvalidArgument,
      "interval",
    );
    await expectCode(c.createSchedule(create(CreateScheduleRequestSchema, { task })), Code.InvalidArgument, "cron");
    await expectCode(
      c.createSchedule(everySeconds(5, { task: create(SubmitTaskRequestSchema, { type: "no_such_type" }) })),
      Code.InvalidArgument,
      "task.type",
    );
    await expectCode(
      c.createSchedule(everySeconds(5, { task: create(SubmitTaskRequestSchema, { type: "noop", queue: "a b" }) })),
      Code.InvalidArgument,
      "task.queue",
    );
    await expectCode(
      c.createSchedule(everySeconds(5, { task: create(SubmitTaskRequestSchema, { type: "noop", idempotencyKey: "k" }) })),
      Code.InvalidArgument,
      "task.idempotency_key",
    );
    await expectCode(
      c.createSchedule(everySeconds(5, { task: create(SubmitTaskRequestSchema, { type: "noop", runAt: { seconds: 1n } }) })),
      Code.InvalidArgument,
      "task.run_at",
    );
    await expectCode(
      c.createSchedule(create(CreateScheduleRequestSchema, { spec: { case: "interval", value: { seconds: 5n } } })),
      Code.InvalidArgument,
      "task",
    );
    await expectCode(c.createSchedule(everySeconds(5, { scheduleId: "a:b" })), Code.InvalidArgument, "schedule_id");
    await expectCode(c.getSchedule({ scheduleId: "" }), Code.InvalidArgument, "schedule_id");
    expect((await c.listSchedules({})).schedules).toEqual([]);
  });
});

describe("ScheduleTicker", () => {
  it("submits exactly one task per tick of a 1 s interval, with the template, tenant and label", async () => {
    const c = client("acme");
    await c.createSchedule(
      everySeconds(1, {
        scheduleId: "beat",
        task: create(SubmitTaskRequestSchema, {
          type: "report",
          queue: "reports",
          payload: { kind: "daily" },
          labels: { team: "ops" },
          maxAttempts: 5,
        }),
      }),
    );
    expect((await main.ticker.tick(T0 + 999)).ticks).toBe(0);
    const results = [];
    for (let k = 1; k <= 10; k++) {
      results.push(await main.ticker.tick(T0 + k * 1000));
      // Ticking again at the same moment, or before the next tick, adds nothing.
      results.push(await main.ticker.tick(T0 + k * 1000));
      results.push(await main.ticker.tick(T0 + k * 1000 + 999));
    }
    expect(results.map((r) => r.created)).toEqual(Array.from({ length: 10 }, () => [1, 0, 0]).flat());
    expect([...(results[0]?.lanes.values() ?? [])]).toEqual([{ queue: "reports", tenant: "acme" }]);

    const tasks = await tasksOf("acme", "beat");
    expect(tasks).toHaveLength(10);
    tasks.forEach((t, i) => {
      expect(t.tenant).toBe("acme");
      expect(t.type).toBe("report");
      expect(t.queue).toBe("reports");
      expect(t.payload).toEqual({ kind: "daily" });
      expect(t.labels).toEqual({ team: "ops", schedule_id: "beat" });
      expect(t.maxAttempts).toBe(5);
      expect(t.status).toBe(TaskStatus.QUEUED);
      expect(t.idempotencyKey).toBe(`schedule:beat:${T0 + (i + 1) * 1000}`);
      expect(timestampMs(t.createdAt!)).toBe(T0 + (i + 1) * 1000);
    });
    const s = await c.getSchedule({ scheduleId: "beat" });
    expect(s.lastTaskId).toBe(tasks[9]?.id);
    expect(timestampMs(s.lastRunAt!)).toBe(T0 + 10_000);
    expect(timestampMs(s.nextRunAt!)).toBe(T0 + 11_000);
  });

  it("creates one task per tick when two replicas tick concurrently with the same now", async () => {
    const c = client("acme");
    const ids = Array.from({ length: 20 }, (_, i) => `s${i}`);
    for (const id of ids) await c.createSchedule(everySeconds(1, { scheduleId: id }));
    const other = replica();
    const tickers = [main.ticker, other.ticker];
    for (let k = 1; k <= 5; k++) {
      const now = T0 + k * 1000;
      const rs = await Promise.all(Array.from({ length: 16 }, (_, i) => (tickers[i % 2] as ScheduleTicker).tick(now)));
      expect(rs.reduce((n, r) => n + r.created, 0)).toBe(ids.length);
      expect(rs.reduce((n, r) => n + r.ticks, 0)).toBe(ids.length);
    }
    for (const id of ids) {
      const tasks = await tasksOf("acme", id);
      expect(tasks.map((t) => t.idempotencyKey)).toEqual([1, 2, 3, 4, 5].map((k) => `schedule:${id}:${T0 + k * 1000}`));
    }
  });

  it("runs one catch-up task after a long gap, then resumes on schedule", async () => {
    const c = client("acme");
    await c.createSchedule(everySeconds(1, { scheduleId: "iv" }));
    await c.createSchedule(
      create(CreateScheduleRequestSchema, {
        scheduleId: "hourly",
        spec: { case: "cron", value: "0 * * * *" },
        task: { type: "noop" },
      }),
    );
    // Nobody ticked for five hours.
    const late = T0 + 5 * HOUR + 500;
    const r = await main.ticker.tick(late);
    expect(r.created).toBe(2);
    expect(await tasksOf("acme", "iv")).toHaveLength(1);
    expect(await tasksOf("acme", "hourly")).toHaveLength(1);
    // The catch-up task carries the first missed tick; the next run is the first after now.
    expect((await tasksOf("acme", "iv"))[0]?.idempotencyKey).toBe(`schedule:iv:${T0 + 1000}`);
    const iv = await c.getSchedule({ scheduleId: "iv" });
    expect(timestampMs(iv.nextRunAt!)).toBe(T0 + 5 * HOUR + 1000);
    const hourly = await c.getSchedule({ scheduleId: "hourly" });
    const nextHour = Math.floor(late / HOUR) * HOUR + HOUR;
    expect(timestampMs(hourly.nextRunAt!)).toBe(nextHour);
    expect((await main.ticker.tick(late + 400)).created).toBe(0);
    expect((await main.ticker.tick(T0 + 5 * HOUR + 1000)).created).toBe(1);
    expect((await main.ticker.tick(nextHour)).created).toBeGreaterThanOrEqual(2);
    expect(await tasksOf("acme", "hourly")).toHaveLength(2);
  });

  it("re-submits a tick whose claimer died before submitting, once its lease expires", async () => {
    const c = client("acme");
    await c.createSchedule(everySeconds(1, { scheduleId: "x" }));
    // A replica claims the tick and dies before submitting.
    const { ticks } = await main.schedules.claimDue(T0 + 1000, 100, LEASE);
    expect(ticks.map((t) => [t.id, t.tickMs])).toEqual([["x", T0 + 1000]]);
    expect((await main.ticker.tick(T0 + 1500)).ticks).toBe(0);
    expect(await tasksOf("acme", "x")).toHaveLength(0);
    // After the lease, another tick() submits it (and the regular tick due then).
    const r = await main.ticker.tick(T0 + 1000 + LEASE);
    expect(r.created).toBe(2);
    const keys = (await tasksOf("acme", "x")).map((t) => t.idempotencyKey);
    expect(keys).toEqual([`schedule:x:${T0 + 1000}`, `schedule:x:${T0 + 2000}`]);
    expect(await main.redis.zcard(`${prefix}:sch:pend`)).toBe(0);
    // Later ticks (and lease expiries) never bring the recovered tick back.
    await main.ticker.tick(T0 + 1000 + 3 * LEASE);
    const later = (await tasksOf("acme", "x")).map((t) => t.idempotencyKey);
    expect(later).toHaveLength(3);
    expect(new Set(later).size).toBe(3);
  });

  it("does not submit twice a tick whose claimer died after submitting, even if its task was reaped", async () => {
    const c = client("acme");
    await c.createSchedule(everySeconds(60, { scheduleId: "y" }));
    const now = T0 + 60_000;
    const [tick] = (await main.schedules.claimDue(now, 100, LEASE)).ticks;
    if (tick === undefined) throw new Error("nothing claimed");
    const template = (await c.getSchedule({ scheduleId: "y" })).task!;
    const task = taskForTick(template, "y", "acme", tick.tickMs, new Set(["noop"]), DEFAULT_SUBMIT, now);
    const [stored] = await main.tasks.submit([task], now);
    expect(stored?.existing).toBe(false);
    // The claimer dies here, before finish(). Its task then finishes and is reaped early.
    const taskKeys = await main.redis.keys(`${prefix}:*:${task.id}`);
    expect(taskKeys.length).toBeGreaterThan(0);
    await main.redis.del(...taskKeys);
    const r = await main.ticker.tick(now + LEASE);
    expect(r.created).toBe(0);
    expect(await main.redis.zcard(`${prefix}:sch:pend`)).toBe(0);
    const s = await c.getSchedule({ scheduleId: "y" });
    expect(s.lastTaskId).toBe(task.id);
  });

  it("submits a delayed task when the template has a delay", async () => {
    const c = client("acme");
    await c.createSchedule(
      everySeconds(10, { scheduleId: "d", task: create(SubmitTaskRequestSchema, { type: "noop", delay: { seconds: 5n } }) }),
    );
    await main.ticker.tick(T0 + 10_000);
    const [t] = await tasksOf("acme", "d");
    expect(t?.status).toBe(TaskStatus.DELAYED);
    expect(timestampMs(t!.scheduledAt!)).toBe(T0 + 15_000);
  });
});
