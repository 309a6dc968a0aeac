import { Redis } from "ioredis";
import { afterEach, beforeEach, describe, expect, inject, it, vi } from "vitest";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { TaskStatus, type Task } from "../../gen/taskmesh/v1/task_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { taskIdFactory } from "../../services/scheduler/submit.js";
import { DEFAULT_BACKOFF, queueTag } from "../../services/scheduler/task-codec.js";
import { FencedError, readyScore, TaskStore, type LeaderStamp, type NewTask, type TaskStoreOptions } from "../../services/scheduler/task-store.js";
import { uniquePrefix } from "../support/ids.js";
import { newTask } from "../support/tasks.js";
import { waitFor } from "../support/wait.js";

const T0 = 1_700_000_000_000;
const AGING = 1000;
const LEASE = 30_000;
/** A scheduler leader of `epoch` whose leadership holds for as long as the tests run. */
const leader = (epoch: bigint): LeaderStamp => ({ epoch, until: Number.MAX_SAFE_INTEGER });
/** The (only) scheduler leader most of these tests play. */
const LEADER = leader(1n);
const nextId = taskIdFactory();

let redis: Redis;
let prefix: string;
let store: TaskStore;
const extraStores: TaskStore[] = [];

function makeStore(opts: Partial<TaskStoreOptions> = {}): TaskStore {
  const s = new TaskStore({ redis, prefix, agingMsPerLevel: AGING, logger: silentLogger(), ...opts });
  extraStores.push(s);
  return s;
}

function task(over: Partial<NewTask> = {}): NewTask {
  return newTask({ payload: { n: 1, s: "x" }, ...over });
}

async function submitOne(over: Partial<NewTask> = {}, now = T0): Promise<Task> {
  const [r] = await store.submit([task(over)], now);
  if (r === undefined) throw new Error("no result");
  return r.task;
}

async function mustGet(id: string): Promise<Task> {
  const t = await store.get(id);
  if (t === undefined) throw new Error(`task ${id} not found`);
  return t;
}

async function prefixKeys(): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== "0");
  return keys;
}

const k = (queue: string, name: string): string => `${prefix}:{${queue}}:${name}`;

beforeEach(() => {
  prefix = uniquePrefix("ts");
  redis = new Redis(inject("redisUrl"));
  store = makeStore();
});

afterEach(async () => {
  for (const s of extraStores.splice(0)) {
    await s.close();
    await s.close(); // twice is fine
  }
  const keys = await prefixKeys();
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
});

describe("submit and get", () => {
  it("stores a task and reads it back exactly as submit returned it", async () => {
    const t = task({
      priority: 3,
      affinityKey: "user-7",
      labels: { env: "prod" },
      timeoutMs: 5000,
      idempotencyKey: "k1",
      concurrencyKey: "c",
      concurrencyLimit: 2,
      payload: { data: [{ a: 1 }, { b: "long ".repeat(30) }] },
    });
    const [r] = await store.submit([t], T0);
    expect(r?.existing).toBe(false);
    const got = await mustGet(t.id);
    expect(got).toEqual(r?.task);
    expect(got.status).toBe(TaskStatus.QUEUED);
    expect(got.tenant).toBe("acme");
    expect(got.payload).toEqual(t.payload);
    expect(got.labels).toEqual({ env: "prod" });
    expect(got.priority).toBe(3);
    expect(got.affinityKey).toBe("user-7");
    expect(got.idempotencyKey).toBe("k1");
    expect(got.concurrencyKey).toBe("c");
    expect(got.concurrencyLimit).toBe(2);
    expect(got.timeout?.seconds).toBe(5n);
    expect(got.backoff?.multiplier).toBe(2);
    expect(timestampMs(got.createdAt!)).toBe(T0);
    expect(timestampMs(got.scheduledAt!)).toBe(T0);
    expect(got.attempt).toBe(0);
    expect(await store.get("01UNKNOWN0000000000000000")).toBeUndefined();
  });

  it("submits a batch across queues in one call each and lists the queues", async () => {
    const tasks = Array.from({ length: 30 }, (_, i) => task({ queue: `q${i % 3}` }));
    const res = await store.submit(tasks, T0);
    expect(res.map((r) => r.task.id)).toEqual(tasks.map((t) => t.id));
    expect(res.every((r) => !r.existing)).toBe(true);
    expect(await store.queues()).toEqual(["q0", "q1", "q2"]);
    const got = await store.getMany([tasks[4]!.id, "nope", tasks[29]!.id]);
    expect(got[0]?.queue).toBe("q1");
    expect(got[1]).toBeUndefined();
    expect(got[2]?.queue).toBe("q2");
    expect(await redis.llen(k("q0", "ready:2:acme"))).toBe(10);
  });

  it("handles batches larger than one script call, end to end", async () => {
    const tasks = Array.from({ length: 1200 }, () => task());
    await store.submit(tasks, T0);
    const peek = await store.peekReady("default", 2000);
    expect(peek.map((p) => p.id)).toEqual(tasks.map((t) => t.id));
    const claimed = await store.claim("default", peek.map((p) => ({ id: p.id, workerId: "w" })), T0 + 1, LEASE, LEADER);
    expect(claimed).toHaveLength(1200);
    const done = await store.complete(
      claimed.map((c) => ({ id: c.id, attempt: c.attempt, outcome: { kind: "succeeded", result: {} } })),
      T0 + 2,
    );
    expect(done.every((d) => d === "applied")).toBe(true);
    expect((await store.getMany(tasks.map((t) => t.id))).every((t) => t?.status === TaskStatus.SUCCEEDED)).toBe(true);
  });

  it("works over RESP2 as well as RESP3", async () => {
    const resp2 = new Redis(inject("redisUrl"), { protocol: 2 });
    try {
      const s = new TaskStore({ redis: resp2, prefix, logger: silentLogger() });
      const [r] = await s.submit([task()], T0);
      const id = r!.task.id;
      expect(await s.get(id)).toEqual(r?.task);
      expect(await s.get("01UNKNOWN0000000000000000")).toBeUndefined();
      await s.claim("default", [{ id, workerId: "w" }], T0, LEASE, LEADER);
      await s.complete([{ id, attempt: 1, outcome: { kind: "succeeded", result: { a: 1 } } }], T0 + 1);
      const evs = await s.events(id, 0);
      expect(evs[evs.length - 1]?.task).toEqual(await s.get(id));
      await s.close();
    } finally {
      await resp2.quit();
    }
  });

  it("returns the first task for a repeated (tenant, idempotency key), also within one batch", async () => {
    const first = await submitOne({ idempotencyKey: "order-1" });
    const [again, sameBatchA, sameBatchB] = await store.submit(
      [task({ idempotencyKey: "order-1" }), task({ idempotencyKey: "order-2" }), task({ idempotencyKey: "order-2" })],
      T0 + 10,
    );
    expect(again).toEqual({ task: first, existing: true });
    expect(sameBatchA?.existing).toBe(false);
    expect(sameBatchB?.existing).toBe(true);
    expect(sameBatchB?.task.id).toBe(sameBatchA?.task.id);
    const other = await submitOne({ idempotencyKey: "order-1", tenant: "globex" });
    expect(other.id).not.toBe(first.id);
    // Another queue, same key: still the first task.
    const [cross] = await store.submit([task({ idempotencyKey: "order-1", queue: "other" })], T0);
    expect(cross?.task.id).toBe(first.id);
    expect(await redis.pttl(`${prefix}:idem:acme:order-1`)).toBeGreaterThan(86_000_000);
  });

  it("rejects queue names that would break the hash tag", async () => {
    await expect(store.submit([task({ queue: "a}b" })], T0)).rejects.toThrow(/queue/);
  });

  it("refuses a connection with an ioredis keyPrefix", () => {
    const prefixed = new Redis(inject("redisUrl"), { keyPrefix: "x:", lazyConnect: true });
    expect(() => new TaskStore({ redis: prefixed, logger: silentLogger() })).toThrow(/keyPrefix/);
    prefixed.disconnect();
  });
});

describe("ready order", () => {
  it("orders by priority, FIFO inside a priority", async () => {
    const low = task({ priority: 1 });
    const n1 = task({ priority: 2 });
    const crit = task({ priority: 4 });
    const n2 = task({ priority: 2 });
    const high = task({ priority: 3 });
    await store.submit([low, n1, crit, n2, high], T0);
    const order = (await store.peekReady("default", 10)).map((p) => p.id);
    expect(order).toEqual([crit.id, high.id, n1.id, n2.id, low.id]);
  });

  it("ages a waiting task until it beats newer higher-priority tasks", async () => {
    // A LOW task waits; CRITICAL tasks are 3 levels higher, worth 3 × AGING ms of waiting.
    const low = await submitOne({ priority: 1 }, T0);
    const critEarly = await submitOne({ priority: 4 }, T0 + 3 * AGING - 1);
    const critLate = await submitOne({ priority: 4 }, T0 + 3 * AGING + 1);
    // One level above LOW, 1.5 × AGING later: behind the LOW task too.
    const normalLate = await submitOne({ priority: 2 }, T0 + 1.5 * AGING);
    const order = (await store.peekReady("default", 10)).map((p) => p.id);
    expect(order).toEqual([critEarly.id, low.id, critLate.id, normalLate.id]);
  });

  it("reports type and affinity key when peeking, and respects the limit", async () => {
    await store.submit([task({ type: "a", affinityKey: "k" }), task({ type: "b" })], T0);
    expect(await store.peekReady("default", 1)).toEqual([expect.objectContaining({ type: "a", affinityKey: "k" })]);
    expect(await store.peekReady("default", 0)).toEqual([]);
    expect(await store.peekReady("empty", 5)).toEqual([]);
  });
});

describe("delayed tasks", () => {
  it("keeps a delayed task out of the ready set until it is due", async () => {
    const t = await submitOne({ runAtMs: T0 + 5000 }, T0);
    expect(t.status).toBe(TaskStatus.DELAYED);
    expect(timestampMs(t.scheduledAt!)).toBe(T0 + 5000);
    expect(await mustGet(t.id)).toEqual(t);
    expect(await store.peekReady("default", 10)).toEqual([]);
    expect(await store.promoteDue("default", T0 + 4999, 100)).toBe(0);
    expect(await store.promoteDue("default", T0 + 5000, 100)).toBe(1);
    expect((await mustGet(t.id)).status).toBe(TaskStatus.QUEUED);
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([t.id]);
    expect(await store.promoteDue("default", T0 + 6000, 100)).toBe(0);
    const events = await store.events(t.id, 0);
    expect(events.map((e) => e.event.value)).toMatchObject([
      { from: TaskStatus.UNSPECIFIED, to: TaskStatus.DELAYED },
      { from: TaskStatus.DELAYED, to: TaskStatus.QUEUED },
    ]);
    expect(events[0]?.task).toEqual(t);
    expect(events[1]?.task).toEqual(await mustGet(t.id));
  });

  it("gives a promoted task its due time as its place in line", async () => {
    const delayed = await submitOne({ runAtMs: T0 + 1000 }, T0);
    const later = await submitOne({}, T0 + 2000);
    await store.promoteDue("default", T0 + 3000, 10);
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([delayed.id, later.id]);
  });
});

describe("claim and results", () => {
  it("claims a task once: a second claim gets nothing", async () => {
    const t = await submitOne({ labels: { a: "b" }, timeoutMs: 1234 });
    const first = await store.claim("default", [{ id: t.id, workerId: "w1" }], T0 + 10, LEASE, LEADER);
    expect(first).toEqual([
      {
        id: t.id,
        attempt: 1,
        type: "noop",
        payload: t.payload,
        timeoutMs: 1234,
        queue: "default",
        tenant: "acme",
        labels: { a: "b" },
        workerId: "w1",
        // Submitted at T0 and ready at once.
        readyAtMs: T0,
      },
    ]);
    expect(await store.claim("default", [{ id: t.id, workerId: "w2" }], T0 + 11, LEASE, LEADER)).toEqual([]);
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.RUNNING);
    expect(got.workerId).toBe("w1");
    expect(timestampMs(got.startedAt!)).toBe(T0 + 10);
    expect(Number(await redis.zscore(k("default", "running"), t.id))).toBe(T0 + 10 + LEASE);
  });

  it("lets exactly one of two concurrent claims win", async () => {
    const tasks = Array.from({ length: 50 }, () => task());
    await store.submit(tasks, T0);
    const other = makeStore();
    const [a, b] = await Promise.all([
      store.claim("default", tasks.map((t) => ({ id: t.id, workerId: "a" })), T0, LEASE, LEADER),
      other.claim("default", tasks.map((t) => ({ id: t.id, workerId: "b" })), T0, LEASE, LEADER),
    ]);
    expect(a.length + b.length).toBe(50);
    expect(new Set([...a, ...b].map((c) => c.id)).size).toBe(50);
  });

  it("completes a success: result kept until its TTL", async () => {
    const t = await submitOne({ resultTtlMs: 60_000 });
    await store.claim("default", [{ id: t.id, workerId: "w1" }], T0, LEASE, LEADER);
    expect(await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: { ok: true } } }], T0 + 50)).toEqual([
      "applied",
    ]);
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.SUCCEEDED);
    expect(got.result).toEqual({ ok: true });
    expect(got.error).toBeUndefined();
    expect(timestampMs(got.finishedAt!)).toBe(T0 + 50);
    expect(Number(await redis.zscore(k("default", "done"), t.id))).toBe(T0 + 50 + 60_000);
    expect(await redis.zcard(k("default", "running"))).toBe(0);
    expect(await redis.zscore(k("default", "dead"), t.id)).toBeNull();
    // A second report for the same attempt is stale.
    expect(await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: {} } }], T0 + 60)).toEqual(["stale"]);
  });

  it("retries a retryable failure with exponential backoff, then fails into the dead set", async () => {
    const t = await submitOne({ maxAttempts: 3, backoff: { initialMs: 1000, maxMs: 1500, multiplier: 2, jitter: 0 } });
    const fail = { kind: "failed", code: "HANDLER_ERROR", message: "boom", retryable: true } as const;

    await store.claim("default", [{ id: t.id, workerId: "w" }], T0, LEASE, LEADER);
    expect(await store.complete([{ id: t.id, attempt: 1, outcome: fail }], T0 + 100)).toEqual(["applied"]);
    let got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.RETRY_WAIT);
    expect(got.error).toMatchObject({ code: "HANDLER_ERROR", message: "boom", retryable: true });
    expect(timestampMs(got.scheduledAt!)).toBe(T0 + 100 + 1000);
    expect(Number(await redis.zscore(k("default", "delayed"), t.id))).toBe(T0 + 1100);
    let [stats] = await store.stats(T0 + 100);
    expect(stats).toMatchObject({ retryWait: 1n, delayed: 0n, running: 0n });

    expect(await store.promoteDue("default", T0 + 1099, 10)).toBe(0);
    expect(await store.promoteDue("default", T0 + 1100, 10)).toBe(1);
    [stats] = await store.stats(T0 + 1100);
    expect(stats).toMatchObject({ retryWait: 0n, queued: 1n });
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0 + 1200, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 2, outcome: fail }], T0 + 1300);
    got = await mustGet(t.id);
    // min(max 1500, 1000 × 2^1)
    expect(timestampMs(got.scheduledAt!)).toBe(T0 + 1300 + 1500);

    await store.promoteDue("default", T0 + 3000, 10);
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0 + 3000, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 3, outcome: fail }], T0 + 3100);
    got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.FAILED);
    expect(got.attempt).toBe(3);
    expect(Number(await redis.zscore(k("default", "dead"), t.id))).toBe(T0 + 3100);
    [stats] = await store.stats(T0 + 3100);
    expect(stats).toMatchObject({ dead: 1n, queued: 0n, retryWait: 0n });
  });

  it("spreads the backoff by the jitter", async () => {
    const tasks = Array.from({ length: 40 }, () => task({ backoff: { initialMs: 1000, maxMs: 10_000, multiplier: 2, jitter: 0.5 } }));
    await store.submit(tasks, T0);
    await store.claim("default", tasks.map((t) => ({ id: t.id, workerId: "w" })), T0, LEASE, LEADER);
    await store.complete(
      tasks.map((t) => ({ id: t.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "", retryable: true } })),
      T0,
    );
    const delays = (await store.getMany(tasks.map((t) => t.id))).map((t) => timestampMs(t!.scheduledAt!) - T0);
    for (const d of delays) {
      expect(d).toBeGreaterThanOrEqual(500);
      expect(d).toBeLessThanOrEqual(1500);
    }
    expect(new Set(delays).size).toBeGreaterThan(5);
  });

  it("fails a non-retryable failure at once into the dead set", async () => {
    const t = await submitOne({ maxAttempts: 5 });
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "failed", code: "INVALID_PAYLOAD", message: "no", retryable: false } }], T0 + 1);
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.FAILED);
    expect(got.error?.code).toBe("INVALID_PAYLOAD");
    expect(await redis.zscore(k("default", "dead"), t.id)).not.toBeNull();
  });

  it("rejects a stale attempt after a requeue and a new claim", async () => {
    const t = await submitOne();
    await store.claim("default", [{ id: t.id, workerId: "w1" }], T0, LEASE, LEADER);
    expect(await store.requeue([{ id: t.id, attempt: 1 }], "worker gone", T0 + 5, LEADER)).toBe(1);
    let got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.QUEUED);
    expect(got.attempt).toBe(1);
    expect(got.error).toMatchObject({ code: "REQUEUED", message: "worker gone" });
    // A second requeue of the same attempt does nothing.
    expect(await store.requeue([{ id: t.id, attempt: 1 }], "again", T0 + 6, LEADER)).toBe(0);

    const [c2] = await store.claim("default", [{ id: t.id, workerId: "w2" }], T0 + 10, LEASE, LEADER);
    expect(c2?.attempt).toBe(2);
    expect(await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: { late: true } } }], T0 + 20)).toEqual([
      "stale",
    ]);
    await store.progress([{ id: t.id, attempt: 1, progress: 90, message: "old" }], T0 + 21);
    expect((await store.renew([{ id: t.id, attempt: 1 }], T0 + 22, LEASE)).stale).toEqual([{ id: t.id, attempt: 1 }]);
    got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.RUNNING);
    expect(got.progress).toBe(0);
    expect(got.workerId).toBe("w2");
    expect(await store.complete([{ id: t.id, attempt: 2, outcome: { kind: "succeeded", result: { ok: 1 } } }], T0 + 30)).toEqual([
      "applied",
    ]);
    got = await mustGet(t.id);
    expect(got.result).toEqual({ ok: 1 });
    expect(got.error).toBeUndefined();
  });

  it("puts a re-queued task back at the front of its priority", async () => {
    const a = await submitOne({}, T0);
    const b = await submitOne({}, T0 + 1);
    await store.claim("default", [{ id: a.id, workerId: "w" }], T0 + 2, LEASE, LEADER);
    await store.requeue([{ id: a.id, attempt: 1 }], "stream broken", T0 + 3, LEADER);
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([a.id, b.id]);
  });

  it("renews leases of current attempts and re-queues expired ones", async () => {
    const [a, b] = (await store.submit([task(), task()], T0)).map((r) => r.task);
    await store.claim("default", [{ id: a!.id, workerId: "w" }, { id: b!.id, workerId: "w" }], T0, 1000, LEADER);
    const { stale } = await store.renew(
      [{ id: a!.id, attempt: 1 }, { id: b!.id, attempt: 7 }, { id: "01UNKNOWN0000000000000000", attempt: 1 }],
      T0 + 900,
      1000,
    );
    expect(stale).toEqual(expect.arrayContaining([{ id: b!.id, attempt: 7 }, { id: "01UNKNOWN0000000000000000", attempt: 1 }]));
    expect(stale).toHaveLength(2);
    expect(Number(await redis.zscore(k("default", "running"), a!.id))).toBe(T0 + 1900);

    // At T0 + 1500 only b's lease (T0 + 1000) has passed.
    expect(await store.expireLeases("default", T0 + 1500, 100, LEADER)).toEqual([{ id: b!.id, attempt: 1 }]);
    expect((await mustGet(b!.id)).error?.code).toBe("LEASE_EXPIRED");
    expect(await store.expireLeases("default", T0 + 2000, 100, LEADER)).toEqual([{ id: a!.id, attempt: 1 }]);
    expect(await store.expireLeases("default", T0 + 9000, 100, LEADER)).toEqual([]);
    const again = await store.claim("default", [{ id: a!.id, workerId: "w2" }], T0 + 2100, 1000, LEADER);
    expect(again[0]?.attempt).toBe(2);
  });
});

describe("leader epochs", () => {
  it("refuses claims, re-queues and lease expiries of an older leader once a later one took the queue over", async () => {
    const [a, b] = (await store.submit([task(), task()], T0)).map((r) => r.task);
    const [claimed] = await store.claim("default", [{ id: a!.id, workerId: "w1" }], T0, 1000, leader(5n));
    expect(claimed?.attempt).toBe(1);
    // Leader 7 takes over: leader 5, deposed but still running, can no longer change anything.
    expect(await store.lead(["default"], leader(7n), T0 + 10, 1000)).toBe(1);
    const refused = (p: Promise<unknown>) => expect(p).rejects.toEqual(new FencedError(7n));
    await refused(store.claim("default", [{ id: b!.id, workerId: "w1" }], T0 + 20, 1000, leader(5n)));
    await refused(store.requeue([{ id: a!.id, attempt: 1 }], "worker stream broken", T0 + 20, leader(5n)));
    await refused(store.expireLeases("default", T0 + 5000, 100, leader(5n)));
    await refused(store.lead(["default"], leader(6n), T0 + 20, 1000));
    expect((await mustGet(a!.id)).status).toBe(TaskStatus.RUNNING);
    expect((await mustGet(b!.id)).status).toBe(TaskStatus.QUEUED);
    // The leader of the newest epoch (and a later one still) works as usual.
    expect(await store.claim("default", [{ id: b!.id, workerId: "w2" }], T0 + 30, 1000, leader(7n))).toHaveLength(1);
    expect(await store.requeue([{ id: a!.id, attempt: 1 }], "worker stream broken", T0 + 40, leader(8n))).toBe(1);
    // ... after which leader 7 is the deposed one.
    await expect(store.claim("default", [{ id: a!.id, workerId: "w2" }], T0 + 50, 1000, leader(7n))).rejects.toEqual(new FencedError(8n));
  });

  it("refuses a leader-only write that reaches Redis after its leadership was known to hold, by Redis's clock", async () => {
    const [a] = (await store.submit([task()], T0)).map((r) => r.task);
    const lapsed = { epoch: 9n, until: Date.now() - 1 };
    const late = new FencedError(0n);
    await expect(store.claim("default", [{ id: a!.id, workerId: "w" }], T0, 1000, lapsed)).rejects.toEqual(late);
    await expect(store.lead(["default"], lapsed, T0, 1000)).rejects.toEqual(late);
    await expect(store.expireLeases("default", T0, 100, lapsed)).rejects.toEqual(late);
    // Nothing changed, not even the queue's epoch: the same leader, confirmed again, goes on.
    expect((await mustGet(a!.id)).status).toBe(TaskStatus.QUEUED);
    expect(await redis.get(k("default", "epoch"))).toBeNull();
    const [direct] = await store.submit([task()], T0, { workers: ["w"], leaseMs: 1000, leader: lapsed });
    expect(direct?.claimed).toBeUndefined();
    expect(await store.claim("default", [{ id: a!.id, workerId: "w" }], T0, 1000, { epoch: 9n, until: Date.now() + 60_000 })).toHaveLength(1);
  });

  it("restarts every running attempt's lease when a new leader takes the queue over", async () => {
    const [a, b] = (await store.submit([task(), task()], T0)).map((r) => r.task);
    await store.claim("default", [{ id: a!.id, workerId: "w" }], T0, 1000, leader(1n));
    await store.claim("default", [{ id: b!.id, workerId: "w" }], T0, 60_000, leader(1n));
    // No leader for 3 s: a's lease (T0 + 1000) ran out meanwhile, b's did not.
    expect(await store.lead(["default"], leader(2n), T0 + 3000, 1000)).toBe(1);
    expect(Number(await redis.zscore(k("default", "running"), a!.id))).toBe(T0 + 4000);
    expect(Number(await redis.zscore(k("default", "running"), b!.id))).toBe(T0 + 60_000);
    expect(await store.expireLeases("default", T0 + 3500, 100, leader(2n))).toEqual([]);
    expect(await store.expireLeases("default", T0 + 4001, 100, leader(2n))).toEqual([{ id: a!.id, attempt: 1 }]);
  });
});

describe("direct claims at submit", () => {
  const direct = (n: number, worker: string | undefined = "w1", by = LEADER) => ({
    workers: Array.from({ length: n }, () => worker),
    leaseMs: LEASE,
    leader: by,
  });

  it("claims a new task for its planned worker in the submit call when nothing is queued", async () => {
    const t = task({ labels: { a: "b" }, timeoutMs: 1234 });
    const [r] = await store.submit([t], T0, direct(1));
    // The answer is the task as submitted (QUEUED); the claim is beside it.
    expect(r?.task.status).toBe(TaskStatus.QUEUED);
    expect(r?.claimed).toEqual({
      id: t.id,
      attempt: 1,
      type: "noop",
      payload: t.payload,
      timeoutMs: 1234,
      queue: "default",
      tenant: "acme",
      labels: { a: "b" },
      workerId: "w1",
      readyAtMs: T0,
    });
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.RUNNING);
    expect(got.workerId).toBe("w1");
    expect(Number(await redis.zscore(k("default", "running"), t.id))).toBe(T0 + LEASE);
    expect(await store.peekReady("default", 10)).toEqual([]);
    // Nobody else can claim it, and it completes like any claimed task (fenced by attempt 1).
    expect(await store.claim("default", [{ id: t.id, workerId: "w2" }], T0 + 1, LEASE, LEADER)).toEqual([]);
    expect(await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: { ok: 1 } } }], T0 + 5)).toEqual(["applied"]);
    const events = await store.events(t.id, 0);
    expect(events.map((e) => e.task?.status)).toEqual([TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]);
    expect(events[1]?.event).toMatchObject({ value: { from: TaskStatus.QUEUED, to: TaskStatus.RUNNING, attempt: 1, workerId: "w1" } });
  });

  it("queues instead whenever claiming would change an order: tasks waiting, paused, delayed, key at its limit", async () => {
    // A task already waiting goes first: the new one queues behind it.
    const waiting = await submitOne();
    const [behind] = await store.submit([task()], T0 + 1, direct(1));
    expect(behind?.claimed).toBeUndefined();
    expect((await store.peekReady("default", 10)).map((c) => c.id)).toEqual([waiting.id, behind?.task.id]);
    // Within one batch: the first task queues (no worker planned), so the second queues too.
    const other = "q2";
    const pair = [task({ queue: other }), task({ queue: other })];
    const res = await store.submit(pair, T0, { workers: [undefined, "w1"], leaseMs: LEASE, leader: LEADER });
    expect(res.map((x) => x.claimed)).toEqual([undefined, undefined]);
    // Both planned and nothing waiting: both are claimed, in order.
    const both = await store.submit([task({ queue: "q3" }), task({ queue: "q3" })], T0, direct(2));
    expect(both.map((x) => x.claimed?.attempt)).toEqual([1, 1]);
    // Paused queue.
    await store.setPaused("q4", true);
    const [paused] = await store.submit([task({ queue: "q4" })], T0, direct(1));
    expect(paused?.claimed).toBeUndefined();
    expect((await mustGet(paused!.task.id)).status).toBe(TaskStatus.QUEUED);
    // Delayed.
    const [later] = await store.submit([task({ queue: "q5", runAtMs: T0 + 60_000 })], T0, direct(1));
    expect(later?.claimed).toBeUndefined();
    expect((await mustGet(later!.task.id)).status).toBe(TaskStatus.DELAYED);
    // Concurrency key at its limit: the second one queues.
    const keyed = [task({ queue: "q6", concurrencyKey: "k", concurrencyLimit: 1 }), task({ queue: "q6", concurrencyKey: "k", concurrencyLimit: 1 })];
    const kr = await store.submit(keyed, T0, direct(2));
    expect(kr.map((x) => x.claimed !== undefined)).toEqual([true, false]);
    expect((await mustGet(keyed[1]!.id)).status).toBe(TaskStatus.QUEUED);
    // A deposed leader (older epoch than the queue's) gets no direct claim: its task queues.
    await store.lead(["q7"], leader(2n), T0, LEASE);
    const [deposed] = await store.submit([task({ queue: "q7" })], T0, direct(1, "w1", LEADER));
    expect(deposed?.claimed).toBeUndefined();
    expect((await mustGet(deposed!.task.id)).status).toBe(TaskStatus.QUEUED);
  });
});

describe("cancel", () => {
  it("cancels a queued task at once", async () => {
    const t = await submitOne();
    const r = await store.cancel("acme", t.id, "not needed", T0 + 1);
    expect(r?.running).toBeUndefined();
    expect(r?.task.status).toBe(TaskStatus.CANCELLED);
    expect(r?.task.error).toMatchObject({ code: "CANCELLED", message: "not needed", retryable: false });
    expect(await redis.llen(k("default", "ready:2:acme"))).toBe(0);
    expect(await redis.zscore(k("default", "dead"), t.id)).not.toBeNull();
    expect(await redis.zscore(k("default", "done"), t.id)).not.toBeNull();
    expect(await mustGet(t.id)).toEqual(r?.task);
  });

  it("cancels a delayed task and a task waiting to retry", async () => {
    const d = await submitOne({ runAtMs: T0 + 10_000 });
    const w = await submitOne();
    await store.claim("default", [{ id: w.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: w.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: true } }], T0);
    expect((await mustGet(w.id)).status).toBe(TaskStatus.RETRY_WAIT);
    expect((await store.cancel("acme", d.id, "x", T0 + 1))?.task.status).toBe(TaskStatus.CANCELLED);
    expect((await store.cancel("acme", w.id, "y", T0 + 1))?.task.status).toBe(TaskStatus.CANCELLED);
    expect(await redis.zcard(k("default", "delayed"))).toBe(0);
    const [stats] = await store.stats(T0 + 1);
    expect(stats).toMatchObject({ delayed: 0n, retryWait: 0n, dead: 2n });
    expect(await store.promoteDue("default", T0 + 100_000, 10)).toBe(0);
  });

  it("asks the worker of a running task, which then ends it", async () => {
    const t = await submitOne();
    await store.claim("default", [{ id: t.id, workerId: "w9" }], T0, LEASE, LEADER);
    const r = await store.cancel("acme", t.id, "user asked", T0 + 1);
    expect(r?.running).toEqual({ workerId: "w9", attempt: 1 });
    expect(r?.task.status).toBe(TaskStatus.RUNNING);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "cancelled", reason: "cancelled" } }], T0 + 2);
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.CANCELLED);
    expect(got.error).toMatchObject({ code: "CANCELLED", message: "user asked", retryable: false });
    expect(await redis.hexists(k("default", `t:${t.id}`), "cxl")).toBe(0);
  });

  it("retries an attempt its worker cancelled on its own, as ABORTED", async () => {
    const t = await submitOne({ maxAttempts: 2 });
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "cancelled", reason: "worker shutting down" } }], T0 + 1);
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.RETRY_WAIT);
    expect(got.error).toMatchObject({ code: "ABORTED", message: "worker shutting down", retryable: true });
    await store.promoteDue("default", T0 + 60_000, 10);
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0 + 60_000, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 2, outcome: { kind: "cancelled", reason: "" } }], T0 + 60_001);
    expect((await mustGet(t.id)).status).toBe(TaskStatus.FAILED);
  });

  it("does not retry a running task whose cancel was requested, whether it fails or its worker is lost", async () => {
    const [a, b] = (await store.submit([task(), task()], T0)).map((r) => r.task);
    await store.claim("default", [{ id: a!.id, workerId: "w" }, { id: b!.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.cancel("acme", a!.id, "stop", T0);
    await store.cancel("acme", b!.id, "stop", T0);
    await store.complete([{ id: a!.id, attempt: 1, outcome: { kind: "failed", code: "ABORTED", message: "aborted", retryable: true } }], T0 + 1);
    expect(await store.requeue([{ id: b!.id, attempt: 1 }], "worker gone", T0 + 1, LEADER)).toBe(0);
    expect((await mustGet(a!.id)).status).toBe(TaskStatus.CANCELLED);
    expect((await mustGet(b!.id)).status).toBe(TaskStatus.CANCELLED);
    expect(await redis.zcard(k("default", "running"))).toBe(0);
  });

  it("returns a finished task unchanged, and nothing for another tenant or an unknown id", async () => {
    const t = await submitOne();
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: { v: 1 } } }], T0 + 1);
    const before = await mustGet(t.id);
    const r = await store.cancel("acme", t.id, "late", T0 + 2);
    expect(r).toEqual({ task: before });
    expect(await store.cancel("globex", t.id, "x", T0 + 2)).toBeUndefined();
    expect(await store.cancel("acme", "01UNKNOWN0000000000000000", "x", T0 + 2)).toBeUndefined();
  });
});

describe("retry from the dead-letter set", () => {
  it("re-queues a failed task keeping its attempt count", async () => {
    const t = await submitOne({ maxAttempts: 1, resultTtlMs: 1000 });
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: true } }], T0 + 1);
    expect((await mustGet(t.id)).status).toBe(TaskStatus.FAILED);

    const r = await store.retry("acme", t.id, T0 + 10);
    if (!("task" in r)) throw new Error(r.error);
    expect(r.task.status).toBe(TaskStatus.QUEUED);
    expect(r.task.attempt).toBe(1);
    expect(r.task.finishedAt).toBeUndefined();
    expect(await redis.zscore(k("default", "dead"), t.id)).toBeNull();
    expect(await redis.zscore(k("default", "done"), t.id)).toBeNull();
    // Not reaped while alive again.
    expect((await store.reapExpired("default", T0 + 10_000, 10)).reaped).toBe(0);
    const [c] = await store.claim("default", [{ id: t.id, workerId: "w" }], T0 + 20, LEASE, LEADER);
    expect(c?.attempt).toBe(2);
  });

  it("re-queues a cancelled task and refuses live, unknown and foreign ones", async () => {
    const t = await submitOne();
    await store.cancel("acme", t.id, "oops", T0);
    expect(await store.retry("globex", t.id, T0 + 1)).toEqual({ error: "not_found" });
    expect("task" in (await store.retry("acme", t.id, T0 + 1))).toBe(true);
    expect(await store.retry("acme", t.id, T0 + 2)).toEqual({ error: "not_dead" });
    expect(await store.retry("acme", "01UNKNOWN0000000000000000", T0 + 2)).toEqual({ error: "not_found" });
  });
});

describe("reapExpired", () => {
  it("deletes every key and index entry of an expired finished task", async () => {
    const ok = await submitOne({ resultTtlMs: 1000, idempotencyKey: "i" });
    const bad = await submitOne({ resultTtlMs: 1000, queue: "default" });
    const live = await submitOne({ resultTtlMs: 1000 });
    await store.claim("default", [{ id: ok.id, workerId: "w" }, { id: bad.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.progress([{ id: ok.id, attempt: 1, progress: 50, message: "half" }], T0 + 1);
    await store.complete(
      [
        { id: ok.id, attempt: 1, outcome: { kind: "succeeded", result: { big: "r".repeat(100) } } },
        { id: bad.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: false } },
      ],
      T0 + 10,
    );
    expect(await redis.exists(k("default", `r:${ok.id}`))).toBe(1);
    expect((await store.reapExpired("default", T0 + 1009, 100)).reaped).toBe(0);
    expect((await store.reapExpired("default", T0 + 1010, 100)).reaped).toBe(2);

    for (const id of [ok.id, bad.id]) {
      expect(await store.get(id)).toBeUndefined();
      expect(await redis.lpos(`${prefix}:tn:acme`, id)).toBeNull();
      expect(await redis.zscore(k("default", "dead"), id)).toBeNull();
      expect(await redis.zscore(k("default", "done"), id)).toBeNull();
      expect((await prefixKeys()).filter((key) => key.includes(id))).toEqual([]);
    }
    expect(await store.get(live.id)).toBeDefined();
    // What is left: the live task and the queue-wide keys (with the claiming leader's epoch).
    const left = (await prefixKeys()).filter((key) => !key.includes(live.id)).sort();
    expect(left).toEqual(
      [
        `${prefix}:idem:acme:i`,
        `${prefix}:queues`,
        `${prefix}:tn:acme`,
        k("default", "ready:2:acme"),
        k("default", "epoch"),
        // The leader's indexes (the queue still has a QUEUED task; a lease was taken) and the
        // tenant's count of unfinished tasks (the live one).
        `${prefix}:ready`,
        k("default", "lanes"),
        `${prefix}:lease`,
        `${prefix}:tq:acme`,
      ].sort(),
    );
    expect(await store.events(ok.id, 0)).toEqual([]);
  });
});

describe("events", () => {
  it("folds the history into snapshots in order: QUEUED → RUNNING → progress → SUCCEEDED", async () => {
    const t = await submitOne();
    await store.claim("default", [{ id: t.id, workerId: "w1" }], T0 + 10, LEASE, LEADER);
    await store.progress([{ id: t.id, attempt: 1, progress: 30, message: "a third" }], T0 + 20);
    await store.log([{ id: t.id, attempt: 1, line: "hello \"world\"\n" }], T0 + 25);
    await store.progress([{ id: t.id, attempt: 1, progress: 150, message: "" }], T0 + 30);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: { out: [1, 2] } } }], T0 + 40);

    const events = await store.events(t.id, 0);
    expect(events.map((e) => Number(e.sequence))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(events.map((e) => e.event.case)).toEqual(["statusChange", "statusChange", "progress", "log", "progress", "statusChange"]);
    expect(events.map((e) => e.task?.status)).toEqual([
      TaskStatus.QUEUED,
      TaskStatus.RUNNING,
      TaskStatus.RUNNING,
      TaskStatus.RUNNING,
      TaskStatus.RUNNING,
      TaskStatus.SUCCEEDED,
    ]);
    expect(events.map((e) => timestampMs(e.time!))).toEqual([T0, T0 + 10, T0 + 20, T0 + 25, T0 + 30, T0 + 40]);
    const [queued, running, p1, log, p2, done] = events;
    expect(queued?.event).toMatchObject({ case: "statusChange", value: { from: 0, to: TaskStatus.QUEUED, attempt: 0 } });
    expect(queued?.task).toEqual(t);
    expect(running?.event).toMatchObject({ value: { from: TaskStatus.QUEUED, to: TaskStatus.RUNNING, attempt: 1, workerId: "w1" } });
    expect(running?.task?.workerId).toBe("w1");
    expect(p1?.event).toMatchObject({ value: { attempt: 1, progress: 30, message: "a third" } });
    expect(p1?.task?.progress).toBe(30);
    expect(log?.event).toMatchObject({ case: "log", value: { attempt: 1, line: "hello \"world\"\n" } });
    expect(p2?.task?.progress).toBe(100);
    expect(p2?.task?.progressMessage).toBe("");
    expect(done?.task?.result).toEqual({ out: [1, 2] });
    expect(done?.task).toEqual(await mustGet(t.id));

    const tail = await store.events(t.id, 4);
    expect(tail.map((e) => Number(e.sequence))).toEqual([5, 6]);
    expect(tail).toEqual(events.slice(4));
    expect(await store.events(t.id, 6)).toEqual([]);
    expect(await store.events("01UNKNOWN0000000000000000", 0)).toEqual([]);
  });

  it("gives the same snapshots when read incrementally as in one read", async () => {
    const t = await submitOne({ maxAttempts: 2 });
    const watcher = makeStore();
    // A subscribed watcher's reads after the first fetch only the new entries.
    const off = watcher.onEvent(t.id, () => undefined);
    await off.ready;
    const reads = vi.spyOn(redis, "tmEvents");
    const seen = [...(await watcher.events(t.id, 0))];
    const last = (): number => Number(seen[seen.length - 1]?.sequence ?? 0);
    const step = async (fn: () => Promise<unknown>): Promise<void> => {
      await fn();
      seen.push(...(await watcher.events(t.id, last())));
    };
    await step(() => store.claim("default", [{ id: t.id, workerId: "w1" }], T0 + 1, LEASE, LEADER));
    await step(() => store.progress([{ id: t.id, attempt: 1, progress: 10, message: "x" }], T0 + 2));
    await step(() =>
      store.complete([{ id: t.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: true } }], T0 + 3),
    );
    await step(() => store.promoteDue("default", T0 + 10_000, 10));
    await step(() => store.claim("default", [{ id: t.id, workerId: "w2" }], T0 + 10_001, LEASE, LEADER));
    await step(() => store.requeue([{ id: t.id, attempt: 2 }], "lost", T0 + 10_002, LEADER));
    await step(() => store.claim("default", [{ id: t.id, workerId: "w3" }], T0 + 10_003, LEASE, LEADER));
    await step(() => store.complete([{ id: t.id, attempt: 3, outcome: { kind: "succeeded", result: { r: 1 } } }], T0 + 10_004));

    off();
    const tailReads = reads.mock.calls.filter((args) => Number(args[7]) > 0 && args[8] === "0");
    expect(tailReads).toHaveLength(8);
    reads.mockRestore();
    const fresh = await makeStore().events(t.id, 0);
    expect(seen).toEqual(fresh);
    expect(fresh.map((e) => e.task?.status)).toEqual([
      TaskStatus.QUEUED,
      TaskStatus.RUNNING,
      TaskStatus.RUNNING,
      TaskStatus.RETRY_WAIT,
      TaskStatus.QUEUED,
      TaskStatus.RUNNING,
      TaskStatus.QUEUED,
      TaskStatus.RUNNING,
      TaskStatus.SUCCEEDED,
    ]);
    const retryWait = fresh[3]?.task;
    expect(retryWait?.error?.code).toBe("E");
    expect(timestampMs(retryWait!.scheduledAt!)).toBe(T0 + 3 + 1000);
    expect(fresh[8]?.task).toEqual(await mustGet(t.id));
  });

  it("folds a dead-lettered and retried task to its stored state", async () => {
    const t = await submitOne({ maxAttempts: 1 });
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: false } }], T0 + 1);
    let evs = await store.events(t.id, 0);
    expect(evs[evs.length - 1]?.task).toEqual(await mustGet(t.id));
    await store.retry("acme", t.id, T0 + 5);
    evs = await store.events(t.id, 0);
    expect(evs[evs.length - 1]?.task).toEqual(await mustGet(t.id));
    expect(evs[evs.length - 1]?.event).toMatchObject({ value: { from: TaskStatus.FAILED, to: TaskStatus.QUEUED } });
    const c = await store.cancel("acme", t.id, "bye", T0 + 6);
    evs = await store.events(t.id, 0);
    expect(evs[evs.length - 1]?.task).toEqual(c?.task);
  });

  it("keeps only the newest maxEvents entries and still folds exact statuses", async () => {
    const small = makeStore({ maxEvents: 5 });
    const [r] = await small.submit([task()], T0);
    const id = r!.task.id;
    await small.claim("default", [{ id, workerId: "w" }], T0, LEASE, LEADER);
    for (let i = 1; i <= 10; i++) await small.progress([{ id, attempt: 1, progress: i * 5, message: `p${i}` }], T0 + i);
    expect(await redis.llen(k("default", `ev:${id}`))).toBe(5);
    const evs = await small.events(id, 0);
    expect(evs.map((e) => Number(e.sequence))).toEqual([8, 9, 10, 11, 12]);
    expect(evs.every((e) => e.task?.status === TaskStatus.RUNNING)).toBe(true);
    expect(evs[4]?.task).toEqual(await small.get(id));
    expect((await small.events(id, 10)).map((e) => Number(e.sequence))).toEqual([11, 12]);
  });

  it("notifies subscribers of new events", async () => {
    const t = await submitOne();
    const seqs: number[] = [];
    const other: number[] = [];
    const off = store.onEvent(t.id, (s) => seqs.push(s));
    const offOther = store.onEvent(t.id, (s) => other.push(s));
    await off.ready;
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0 + 1, LEASE, LEADER);
    await store.progress([{ id: t.id, attempt: 1, progress: 1, message: "" }], T0 + 2);
    await waitFor(() => seqs.length >= 2 && other.length >= 2, { what: "event notifications" });
    expect(seqs).toEqual([2, 3]);
    off();
    off();
    await store.progress([{ id: t.id, attempt: 1, progress: 2, message: "" }], T0 + 3);
    await waitFor(() => other.length >= 3, { what: "remaining listener" });
    expect(seqs).toEqual([2, 3]);
    offOther();
  });
});

describe("list", () => {
  it("pages a tenant's tasks newest first", async () => {
    const tasks = Array.from({ length: 25 }, () => task());
    await store.submit(tasks, T0);
    await store.submit([task({ tenant: "globex" })], T0);
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await store.list("acme", {}, 10, token);
      seen.push(...page.tasks.map((t) => t.id));
      token = page.nextPageToken;
      pages++;
    } while (token !== "" && pages < 10);
    expect(seen).toEqual(tasks.map((t) => t.id).reverse());
    expect(pages).toBeLessThanOrEqual(4);
    expect((await store.list("globex", {}, 100, "")).tasks).toHaveLength(1);
    expect((await store.list("nobody", {}, 100, "")).tasks).toEqual([]);
  });

  it("filters by status, type, queue and label", async () => {
    const a = task({ type: "a", labels: { env: "prod" } });
    const b = task({ type: "b", queue: "other", labels: { env: "dev" } });
    const c = task({ type: "a", queue: "other" });
    await store.submit([a, b, c], T0);
    await store.claim("other", [{ id: c.id, workerId: "w" }], T0, LEASE, LEADER);
    const ids = async (f: Parameters<TaskStore["list"]>[1]): Promise<string[]> =>
      (await store.list("acme", f, 50, "")).tasks.map((t) => t.id);
    expect(await ids({ type: "a" })).toEqual([c.id, a.id]);
    expect(await ids({ queue: "other" })).toEqual([c.id, b.id]);
    expect(await ids({ status: TaskStatus.RUNNING })).toEqual([c.id]);
    expect(await ids({ status: TaskStatus.QUEUED, type: "a" })).toEqual([a.id]);
    expect(await ids({ label: ["env", "dev"] })).toEqual([b.id]);
    expect(await ids({ label: ["env", "qa"] })).toEqual([]);
  });

  it("scans a bounded number of ids per call and continues with the token", async () => {
    const tasks = Array.from({ length: 30 }, (_, i) => task({ type: i === 0 ? "rare" : "common" }));
    await store.submit(tasks, T0);
    // Page size 2 scans at most 20 ids: the only match (the oldest) is beyond them.
    const first = await store.list("acme", { type: "rare" }, 2, "");
    expect(first.tasks).toEqual([]);
    expect(first.nextPageToken).not.toBe("");
    const second = await store.list("acme", { type: "rare" }, 2, first.nextPageToken);
    expect(second.tasks.map((t) => t.id)).toEqual([tasks[0]!.id]);
    expect(second.nextPageToken).toBe("");
  });

  it("rejects a malformed page token", async () => {
    await expect(store.list("acme", {}, 10, Buffer.from("a b{").toString("base64url"))).rejects.toThrow(/page_token/);
  });
});

describe("compact layout", () => {
  /** A task with nothing but defaults: no spec to store. */
  const plain = (over: Partial<NewTask> = {}): NewTask => task({ payload: {}, backoff: { ...DEFAULT_BACKOFF }, ...over });
  const keysOf = async (id: string): Promise<string[]> => (await prefixKeys()).filter((key) => key.includes(id)).sort();

  it("keeps a task in one small hash from submit to its end, with no event list when nothing but its run happened", async () => {
    const [r] = await store.submit([plain()], T0);
    const t = r!.task;
    const tk = k("default", `t:${t.id}`);
    expect(await keysOf(t.id)).toEqual([tk]);
    expect(await redis.call("OBJECT", "ENCODING", tk)).toBe("listpack");
    expect(await redis.hgetall(tk)).toEqual({ s: String(TaskStatus.QUEUED), c: String(T0), n: "acme", y: "noop" });
    expect(await mustGet(t.id)).toEqual(t);

    await store.claim("default", [{ id: t.id, workerId: "w1" }], T0 + 10, LEASE, LEADER);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: { ok: true } } }], T0 + 20);
    // A short result stays in the hash; the claim and the end are implied by the hash.
    expect(await keysOf(t.id)).toEqual([tk]);
    expect(await redis.call("OBJECT", "ENCODING", tk)).toBe("listpack");
    const done = await mustGet(t.id);
    expect(done.result).toEqual({ ok: true });
    const events = await store.events(t.id, 0);
    expect(events.map((e) => [Number(e.sequence), timestampMs(e.time!), e.task?.status])).toEqual([
      [1, T0, TaskStatus.QUEUED],
      [2, T0 + 10, TaskStatus.RUNNING],
      [3, T0 + 20, TaskStatus.SUCCEEDED],
    ]);
    expect(events[1]?.event).toMatchObject({ value: { from: TaskStatus.QUEUED, to: TaskStatus.RUNNING, attempt: 1, workerId: "w1" } });
    expect(events[1]?.task).toMatchObject({ status: TaskStatus.RUNNING, workerId: "w1", result: undefined });
    expect(events[2]?.task).toEqual(done);
    expect(await store.events(t.id, 2)).toEqual(events.slice(2));
  });

  it("stores the implied events unchanged when a later event needs the list", async () => {
    const t = await submitOne({ maxAttempts: 1 });
    await store.claim("default", [{ id: t.id, workerId: "w" }], T0 + 1, LEASE, LEADER);
    const running = await store.events(t.id, 0);
    await store.complete([{ id: t.id, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: false } }], T0 + 2);
    const failed = await store.events(t.id, 0);
    expect(failed.slice(0, 2)).toEqual(running);
    expect(failed[2]?.event).toMatchObject({ value: { from: TaskStatus.RUNNING, to: TaskStatus.FAILED, error: { code: "E" } } });
    expect(await redis.exists(k("default", `ev:${t.id}`))).toBe(0);

    await store.retry("acme", t.id, T0 + 3);
    const retried = await store.events(t.id, 0);
    expect(retried.slice(0, 3)).toEqual(failed);
    expect(await redis.llen(k("default", `ev:${t.id}`))).toBe(3);
    await store.claim("default", [{ id: t.id, workerId: "w2" }], T0 + 4, LEASE, LEADER);
    await store.log([{ id: t.id, attempt: 2, line: "hi" }], T0 + 5);
    const logged = await store.events(t.id, 0);
    expect(logged.slice(0, 4)).toEqual(retried);
    expect(logged.map((e) => Number(e.sequence))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(logged[4]?.event).toMatchObject({ value: { to: TaskStatus.RUNNING, attempt: 2, workerId: "w2" } });
    expect(logged[5]?.task).toEqual(await mustGet(t.id));
  });

  it("keeps the dispatch order whatever order tasks enter the ready lists in", async () => {
    // A deterministic shuffle of tasks with random enqueue times and priorities, each submitted
    // with its own clock (replicas whose clocks differ), then half of them claimed and re-queued.
    let seed = 42;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const made: { id: string; enq: number; priority: 1 | 2 | 3 | 4 }[] = [];
    for (let i = 0; i < 150; i++) {
      const enq = T0 + Math.floor(rnd() * 20 * AGING);
      const priority = (1 + Math.floor(rnd() * 4)) as 1 | 2 | 3 | 4;
      const t = await submitOne({ priority }, enq);
      made.push({ id: t.id, enq, priority });
    }
    const expected = (): string[] =>
      [...made]
        .sort((a, b) => readyScore(a.enq, a.priority, AGING) - readyScore(b.enq, b.priority, AGING) || (a.id < b.id ? -1 : 1))
        .map((m) => m.id);
    expect((await store.peekReady("default", 1000)).map((p) => p.id)).toEqual(expected());
    expect((await store.peekReady("default", 7)).map((p) => p.id)).toEqual(expected().slice(0, 7));
    const some = made.filter(() => rnd() < 0.5).map((m) => m.id);
    const claimed = await store.claim("default", some.map((id) => ({ id, workerId: "w" })), T0 + 30 * AGING, LEASE, LEADER);
    expect(claimed).toHaveLength(some.length);
    const left = new Set(some);
    expect((await store.peekReady("default", 1000)).map((p) => p.id)).toEqual(expected().filter((id) => !left.has(id)));
    expect(await store.requeue(claimed.map((c) => ({ id: c.id, attempt: c.attempt })), "gone", T0 + 31 * AGING, LEADER)).toBe(some.length);
    expect((await store.peekReady("default", 1000)).map((p) => p.id)).toEqual(expected());
    // Cancelling takes a task out from anywhere in line.
    const order = expected();
    const cancelled = [order[0]!, order[37]!, order[90]!, order[149]!];
    for (const id of cancelled) expect((await store.cancel("acme", id, "x", T0 + 32 * AGING))?.task.status).toBe(TaskStatus.CANCELLED);
    expect((await store.peekReady("default", 1000)).map((p) => p.id)).toEqual(order.filter((id) => !cancelled.includes(id)));
    made.splice(0, made.length, ...made.filter((m) => !cancelled.includes(m.id)));
    const [stats] = await store.stats(T0 + 40 * AGING);
    expect(stats?.queued).toBe(146n);
    expect(Number(stats?.oldestQueuedAge?.seconds)).toBe(Math.floor((T0 + 40 * AGING - Math.min(...made.map((m) => m.enq))) / 1000));
  });

  it("finds a task by its id when two queues share a tag", async () => {
    const byTag = new Map<string, string>();
    let pair: [string, string] | undefined;
    for (let i = 0; pair === undefined; i++) {
      const q = `q${i}`;
      const other = byTag.get(queueTag(q));
      if (other !== undefined) pair = [other, q];
      else byTag.set(queueTag(q), q);
    }
    const [qa, qb] = pair;
    const a = await submitOne({ queue: qa });
    const b = await submitOne({ queue: qb });
    expect(a.id.slice(-2)).toBe(b.id.slice(-2));
    expect((await store.getMany([a.id, b.id])).map((t) => t?.queue)).toEqual([qa, qb]);
    // A fresh store has no cached queues: it finds them from the ids.
    const fresh = makeStore();
    expect((await fresh.renew([{ id: b.id, attempt: 1 }], T0, LEASE)).stale).toEqual([{ id: b.id, attempt: 1 }]);
    expect((await fresh.cancel("acme", b.id, "x", T0))?.task.queue).toBe(qb);
    expect((await fresh.events(a.id, 0)).map((e) => e.task?.queue)).toEqual([qa]);
    expect((await fresh.list("acme", {}, 10, "")).tasks.map((t) => t.queue)).toEqual([qb, qa]);
    expect(await fresh.queues()).toEqual([qa, qb].sort());
  });

  it("lists ids that arrive out of order (another replica's clock) newest first, and forgets reaped ones", async () => {
    const behind = taskIdFactory();
    const first = Array.from({ length: 5 }, () => task({ resultTtlMs: 1000 }));
    await store.submit(first, T0);
    // Made a second earlier by a replica whose clock is behind, stored after the first ones.
    const late = Array.from({ length: 4 }, () => task({ id: behind("default", Date.now() - 1000) }));
    await store.submit(late, T0);
    const newestFirst = [...first, ...late].map((t) => t.id).sort().reverse();
    expect(newestFirst.slice(0, 5)).toEqual(first.map((t) => t.id).reverse());
    const seen: string[] = [];
    let token = "";
    do {
      const page = await store.list("acme", {}, 2, token);
      seen.push(...page.tasks.map((t) => t.id));
      token = page.nextPageToken;
    } while (token !== "");
    expect(seen).toEqual(newestFirst);
    expect(await redis.lrange(`${prefix}:tn:acme`, 0, -1)).toEqual([...newestFirst].reverse());

    const gone = [first[1]!, first[3]!];
    await store.claim("default", gone.map((t) => ({ id: t.id, workerId: "w" })), T0, LEASE, LEADER);
    await store.complete(gone.map((t) => ({ id: t.id, attempt: 1, outcome: { kind: "succeeded", result: {} } })), T0);
    expect((await store.reapExpired("default", T0 + 1000, 10)).reaped).toBe(2);
    const left = newestFirst.filter((id) => !gone.some((t) => t.id === id));
    expect((await store.list("acme", {}, 100, "")).tasks.map((t) => t.id)).toEqual(left);
  });

  it("refuses an id without its queue's tag, and an id that is taken", async () => {
    await expect(store.submit([task({ id: nextId("other", Date.now()) })], T0)).rejects.toThrow(/tag/);
    const t = task();
    await store.submit([t], T0);
    await expect(store.submit([{ ...t, tenant: "globex" }], T0)).rejects.toThrow(/taken/);
    expect((await mustGet(t.id)).tenant).toBe("acme");
  });
});

describe("stats", () => {
  it("reports depths by status and the oldest queued age", async () => {
    await store.submit([task({ priority: 1 })], T0);
    await store.submit([task({ priority: 4 }), task({ runAtMs: T0 + 60_000 })], T0 + 2000);
    const running = await submitOne({}, T0 + 2000);
    await store.claim("default", [{ id: running.id, workerId: "w" }], T0 + 2000, LEASE, LEADER);
    await submitOne({ queue: "empty" }, T0).then((t) => store.cancel("acme", t.id, "x", T0));
    const stats = await store.stats(T0 + 5000);
    const byName = new Map(stats.map((s) => [s.name, s]));
    expect(byName.get("default")).toMatchObject({ queued: 2n, running: 1n, delayed: 1n, retryWait: 0n, dead: 0n });
    // The LOW task from T0 is the oldest even though the CRITICAL one is first in line.
    expect(byName.get("default")?.oldestQueuedAge?.seconds).toBe(5n);
    expect(byName.get("empty")).toMatchObject({ queued: 0n, dead: 1n });
    expect(byName.get("empty")?.oldestQueuedAge).toBeUndefined();
  });
});

describe("concurrency limits", () => {
  const running = async (key: string, queue = "default"): Promise<number | null> => {
    const v = await redis.hget(k(queue, "cc"), key);
    return v === null ? null : Number(v);
  };

  it("claims at most the limit per key, skipping blocked tasks in place, and one more per finished task", async () => {
    const keyed = Array.from({ length: 5 }, () => task({ concurrencyKey: "acct-1", concurrencyLimit: 2 }));
    const free = Array.from({ length: 5 }, () => task());
    await store.submit([...keyed, ...free], T0);
    const all = [...keyed, ...free].map((t) => ({ id: t.id, workerId: "w" }));

    const first = await store.claim("default", all, T0 + 1, LEASE, LEADER);
    expect(first.map((c) => c.id)).toEqual([keyed[0]!.id, keyed[1]!.id, ...free.map((t) => t.id)]);
    expect(await running("acct-1")).toBe(2);
    // The blocked ones stay ready, in order, and are not offered by peek.
    expect(await redis.lrange(k("default", "ready:2:acme"), 0, -1)).toEqual(keyed.slice(2).map((t) => t.id));
    expect(await store.peekReady("default", 10)).toEqual([]);
    expect((await mustGet(keyed[2]!.id)).status).toBe(TaskStatus.QUEUED);
    expect(await store.claim("default", all, T0 + 2, LEASE, LEADER)).toEqual([]);

    await store.complete([{ id: keyed[0]!.id, attempt: 1, outcome: { kind: "succeeded", result: {} } }], T0 + 3);
    expect(await running("acct-1")).toBe(1);
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([keyed[2]!.id]);
    const next = await store.claim("default", all, T0 + 4, LEASE, LEADER);
    expect(next.map((c) => c.id)).toEqual([keyed[2]!.id]);
    expect(await running("acct-1")).toBe(2);
  });

  it("peeks past blocked tasks, counting the ones it already picked, within a bounded scan", async () => {
    const keyed = Array.from({ length: 7 }, () => task({ concurrencyKey: "k", concurrencyLimit: 2 }));
    const behind = task();
    await store.submit([...keyed, behind], T0);
    // Nothing runs yet: the first two of the key fit, the rest of the key do not.
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([keyed[0]!.id, keyed[1]!.id, behind.id]);
    expect((await store.peekReady("default", 2)).map((p) => p.id)).toEqual([keyed[0]!.id, keyed[1]!.id]);
    await store.claim("default", [{ id: keyed[0]!.id, workerId: "w" }], T0, LEASE, LEADER);
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([keyed[1]!.id, behind.id]);
    await store.claim("default", [{ id: keyed[1]!.id, workerId: "w" }], T0, LEASE, LEADER);
    // Five blocked tasks at the head: the default scan steps over them, a scan of 2 gives up.
    expect((await store.peekReady("default", 1)).map((p) => p.id)).toEqual([behind.id]);
    expect(await makeStore({ maxPeekSkip: 2 }).peekReady("default", 10)).toEqual([]);
    expect((await makeStore({ maxPeekSkip: 5 }).peekReady("default", 10)).map((p) => p.id)).toEqual([behind.id]);
  });

  it("counts every running task of the key, applies each task's own limit, and scopes keys to their queue", async () => {
    const unlimited = task({ concurrencyKey: "k" });
    const limited = task({ concurrencyKey: "k", concurrencyLimit: 1 });
    const roomy = task({ concurrencyKey: "k", concurrencyLimit: 2 });
    const otherQueue = task({ queue: "other", concurrencyKey: "k", concurrencyLimit: 1 });
    await store.submit([unlimited, limited, roomy, otherQueue], T0);
    const claims = [unlimited, limited, roomy].map((t) => ({ id: t.id, workerId: "w" }));
    const got = await store.claim("default", claims, T0, LEASE, LEADER);
    expect(got.map((c) => c.id)).toEqual([unlimited.id, roomy.id]);
    expect(await running("k")).toBe(2);
    const [o] = await store.claim("other", [{ id: otherQueue.id, workerId: "w" }], T0, LEASE, LEADER);
    expect(o?.id).toBe(otherQueue.id);
    expect(await running("k", "other")).toBe(1);
    expect(await running("k")).toBe(2);
  });

  it("gives the place back on every way out of RUNNING, down to no counter at all", async () => {
    const ts = Array.from({ length: 6 }, () => task({ concurrencyKey: "k", concurrencyLimit: 10, maxAttempts: 3 }));
    await store.submit(ts, T0);
    const [ok, fails, lost, cancelled, lostCancelled, expired] = ts.map((t) => t.id) as [string, string, string, string, string, string];
    const claims = ts.map((t) => ({ id: t.id, workerId: "w" }));
    // All but one with a long lease; `expired` with a short one.
    await store.claim("default", claims.slice(0, 5), T0, LEASE, LEADER);
    await store.claim("default", claims.slice(5), T0, 1000, LEADER);
    expect(await running("k")).toBe(6);

    await store.complete([{ id: ok, attempt: 1, outcome: { kind: "succeeded", result: {} } }], T0 + 1);
    expect(await running("k")).toBe(5);
    // A repeated (stale) report changes nothing.
    expect(await store.complete([{ id: ok, attempt: 1, outcome: { kind: "succeeded", result: {} } }], T0 + 1)).toEqual(["stale"]);
    expect(await running("k")).toBe(5);

    await store.complete([{ id: fails, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: true } }], T0 + 2);
    expect((await mustGet(fails)).status).toBe(TaskStatus.RETRY_WAIT);
    expect(await running("k")).toBe(4);

    expect(await store.requeue([{ id: lost, attempt: 1 }], "worker gone", T0 + 3, LEADER)).toBe(1);
    expect(await running("k")).toBe(3);

    await store.cancel("acme", cancelled, "stop", T0 + 4);
    expect(await running("k")).toBe(3);
    await store.complete([{ id: cancelled, attempt: 1, outcome: { kind: "cancelled", reason: "stop" } }], T0 + 5);
    expect((await mustGet(cancelled)).status).toBe(TaskStatus.CANCELLED);
    expect(await running("k")).toBe(2);

    await store.cancel("acme", lostCancelled, "stop", T0 + 6);
    expect(await store.requeue([{ id: lostCancelled, attempt: 1 }], "worker gone", T0 + 7, LEADER)).toBe(0);
    expect((await mustGet(lostCancelled)).status).toBe(TaskStatus.CANCELLED);
    expect(await running("k")).toBe(1);

    expect(await store.expireLeases("default", T0 + 1000, 10, LEADER)).toEqual([{ id: expired, attempt: 1 }]);
    expect(await running("k")).toBeNull();
    expect(await redis.exists(k("default", "cc"))).toBe(0);

    // The re-queued ones run again and finish: still exact.
    await store.promoteDue("default", T0 + 60_000, 10);
    const again = await store.claim("default", claims, T0 + 60_000, LEASE, LEADER);
    expect(again.map((c) => c.id).sort()).toEqual([fails, lost, expired].sort());
    expect(await running("k")).toBe(3);
    await store.complete(
      again.map((c) => ({ id: c.id, attempt: c.attempt, outcome: { kind: "succeeded", result: {} } as const })),
      T0 + 60_001,
    );
    expect(await redis.exists(k("default", "cc"))).toBe(0);
  });
});

describe("pause and resume", () => {
  it("hides a paused queue's tasks from peek and claim, lets running ones finish, and resumes in order", async () => {
    const low = task({ priority: 1 });
    const normal = task();
    const high = task({ priority: 3 });
    const busy = task();
    const elsewhere = task({ queue: "other" });
    await store.submit([low, normal, high, busy, elsewhere], T0);
    await store.claim("default", [{ id: busy.id, workerId: "w" }], T0, LEASE, LEADER);
    const before = (await store.peekReady("default", 10)).map((p) => p.id);
    expect(before).toEqual([high.id, normal.id, low.id]);

    await store.setPaused("default", true);
    await store.setPaused("default", true);
    expect(await store.peekReady("default", 10)).toEqual([]);
    expect(await store.claim("default", before.map((id) => ({ id, workerId: "w" })), T0 + 1, LEASE, LEADER)).toEqual([]);
    // Submissions are still taken; the running task still finishes; other queues are unaffected.
    const late = await submitOne({ priority: 1 }, T0 + 2);
    expect(late.status).toBe(TaskStatus.QUEUED);
    expect(await store.complete([{ id: busy.id, attempt: 1, outcome: { kind: "succeeded", result: {} } }], T0 + 3)).toEqual(["applied"]);
    expect((await store.peekReady("other", 10)).map((p) => p.id)).toEqual([elsewhere.id]);
    let byName = new Map((await store.stats(T0 + 4)).map((s) => [s.name, s]));
    expect(byName.get("default")).toMatchObject({ paused: true, queued: 4n, running: 0n });
    expect(byName.get("other")?.paused).toBe(false);

    await store.setPaused("default", false);
    expect((await store.peekReady("default", 10)).map((p) => p.id)).toEqual([...before, late.id]);
    const claimed = await store.claim("default", [{ id: high.id, workerId: "w" }], T0 + 5, LEASE, LEADER);
    expect(claimed.map((c) => c.id)).toEqual([high.id]);
    byName = new Map((await store.stats(T0 + 5)).map((s) => [s.name, s]));
    expect(byName.get("default")?.paused).toBe(false);
  });

  it("lists a paused queue that has no tasks, and rejects bad queue names", async () => {
    await store.setPaused("idle", true);
    expect(await store.queues()).toEqual(["idle"]);
    expect(await store.stats(T0)).toEqual([expect.objectContaining({ name: "idle", paused: true, queued: 0n, running: 0n })]);
    await store.setPaused("idle", false);
    expect(await store.stats(T0)).toEqual([expect.objectContaining({ name: "idle", paused: false })]);
    expect(await redis.exists(k("idle", "paused"))).toBe(0);
    await expect(store.setPaused("a{b", true)).rejects.toThrow(/queue/);
  });
});

describe("re-queue limit", () => {
  it("fails a task that keeps losing its worker after maxRequeues re-queues, and a retry starts the count again", async () => {
    const t = await submitOne({ concurrencyKey: "k", concurrencyLimit: 1, maxAttempts: 100 });
    let now = T0;
    // Ten losses, alternating a lost worker and an expired lease: each goes back to the queue.
    for (let i = 1; i <= 10; i++) {
      const [c] = await store.claim("default", [{ id: t.id, workerId: "w" }], now, 1000, LEADER);
      expect(c?.attempt).toBe(i);
      if (i % 2 === 0) expect(await store.requeue([{ id: t.id, attempt: i }], "worker gone", now + 1, LEADER)).toBe(1);
      else expect(await store.expireLeases("default", now + 1000, 10, LEADER)).toEqual([{ id: t.id, attempt: i }]);
      expect((await mustGet(t.id)).status).toBe(TaskStatus.QUEUED);
      now += 2000;
    }
    await store.claim("default", [{ id: t.id, workerId: "w" }], now, 1000, LEADER);
    expect(await store.requeue([{ id: t.id, attempt: 11 }], "worker gone", now + 1, LEADER)).toBe(0);
    const failed = await mustGet(t.id);
    expect(failed.status).toBe(TaskStatus.FAILED);
    expect(failed.error).toMatchObject({ code: "TOO_MANY_REQUEUES", message: "re-queued 10 times; last: worker gone", retryable: false });
    expect(await redis.zscore(k("default", "dead"), t.id)).not.toBeNull();
    expect(await redis.zcard(k("default", "running"))).toBe(0);
    expect(await redis.exists(k("default", "cc"))).toBe(0);
    const evs = await store.events(t.id, 0);
    expect(evs[evs.length - 1]?.task).toEqual(failed);

    const r = await store.retry("acme", t.id, now + 10);
    expect("task" in r).toBe(true);
    await store.claim("default", [{ id: t.id, workerId: "w" }], now + 20, 1000, LEADER);
    expect(await store.requeue([{ id: t.id, attempt: 12 }], "worker gone", now + 21, LEADER)).toBe(1);
  });

  it("honours maxRequeues on the lease-expiry path, 0 failing at the first loss", async () => {
    const strict = makeStore({ maxRequeues: 0 });
    const t = await submitOne();
    await strict.claim("default", [{ id: t.id, workerId: "w" }], T0, 1000, LEADER);
    expect(await strict.expireLeases("default", T0 + 1000, 10, LEADER)).toEqual([]);
    const got = await mustGet(t.id);
    expect(got.status).toBe(TaskStatus.FAILED);
    expect(got.error).toMatchObject({ code: "TOO_MANY_REQUEUES", message: "re-queued 0 times; last: lease expired" });
    expect(await redis.zcard(k("default", "running"))).toBe(0);
  });
});
