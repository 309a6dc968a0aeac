/**
 * The task store's side of fair use (docs/fairness.md) on a real Redis: tenant quotas checked
 * before anything is stored, the counts behind them kept exact through every way a task ends, the
 * leader's indexes (ready queues with their tenants; due, lease and reap times) and the removal
 * of queues left empty.
 */
import { Redis } from "ioredis";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { QuotaExceededError, TaskStore, type LeaderStamp, type NewTask, type TenantQuota } from "../../services/scheduler/task-store.js";
import { queueTag } from "../../services/scheduler/task-codec.js";
import { uniquePrefix } from "../support/ids.js";
import { newTask } from "../support/tasks.js";

const T0 = 1_700_000_000_000;
const LEASE = 30_000;
const LEADER: LeaderStamp = { epoch: 1n, until: Number.MAX_SAFE_INTEGER };

let redis: Redis;
let prefix: string;
let store: TaskStore;

beforeEach(() => {
  prefix = uniquePrefix("fair");
  redis = new Redis(inject("redisUrl"));
  store = new TaskStore({ redis, prefix, logger: silentLogger() });
});

afterEach(async () => {
  await store.close();
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
    cursor = next;
    if (keys.length > 0) await redis.del(...keys);
  } while (cursor !== "0");
  await redis.quit();
});

const quota = (q: TenantQuota) => (): TenantQuota => q;

async function prefixKeyCount(): Promise<number> {
  let n = 0;
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
    cursor = next;
    n += keys.length;
  } while (cursor !== "0");
  return n;
}

async function refusal(p: Promise<unknown>): Promise<QuotaExceededError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof QuotaExceededError)) throw new Error(`expected a QuotaExceededError, got ${String(err)}`);
  return err;
}

describe("tenant quotas", () => {
  it("refuses a task in one queue too many, storing nothing, and admits it once a queue is free again", async () => {
    const q = quota({ maxQueues: 2, maxTasks: 0 });
    await store.submit([newTask({ queue: "a" })], T0, undefined, q);
    const [b] = await store.submit([newTask({ queue: "b" })], T0, undefined, q);
    // More tasks in a queue the tenant already uses are fine.
    await store.submit([newTask({ queue: "a" }), newTask({ queue: "a" })], T0, undefined, q);
    const keys = await prefixKeyCount();

    const err = await refusal(store.submit([newTask({ queue: "c" })], T0, undefined, q));
    expect(err).toMatchObject({ tenant: "acme", quota: "queues", limit: 2, current: 2 });
    expect(err.message).toMatch(/max_queues_per_tenant 2/);
    expect(await prefixKeyCount()).toBe(keys);
    expect((await store.queues()).includes("c")).toBe(false);
    // Another tenant has its own count.
    await store.submit([newTask({ queue: "c", tenant: "beta" })], T0, undefined, q);

    // b's only task ends: the tenant uses one queue, and c fits.
    await store.cancel("acme", (b?.task.id) as string, "", T0 + 1);
    expect((await store.tenantUsage("acme")).queues).toEqual(new Map([["a", 3]]));
    await store.submit([newTask({ queue: "c" })], T0 + 2, undefined, q);
    expect(await store.tenantUsage("acme")).toEqual({ queues: new Map([["a", 3], ["c", 1]]), tasks: 4 });
  });

  it("refuses a batch that would exceed the unfinished tasks quota as a whole, and counts only new tasks", async () => {
    const q = quota({ maxQueues: 0, maxTasks: 5 });
    const first = await store.submit([newTask({ idempotencyKey: "k1" }), newTask(), newTask()], T0, undefined, q);
    const err = await refusal(store.submit([newTask(), newTask(), newTask()], T0, undefined, q));
    expect(err).toMatchObject({ quota: "tasks", limit: 5, current: 3 });
    expect((await store.tenantUsage("acme")).tasks).toBe(3);
    // Tasks that already exist (same idempotency key, within the batch too) are not new ones.
    const again = await store.submit(
      [newTask({ idempotencyKey: "k1" }), newTask({ idempotencyKey: "k2" }), newTask({ idempotencyKey: "k2" }), newTask()],
      T0,
      undefined,
      q,
    );
    expect(again.map((r) => r.existing)).toEqual([true, false, true, false]);
    expect(again[0]?.task.id).toBe(first[0]?.task.id);
    expect(again[2]?.task.id).toBe(again[1]?.task.id);
    expect((await store.tenantUsage("acme")).tasks).toBe(5);
    await refusal(store.submit([newTask()], T0, undefined, q));
  });

  it("keeps the count exact through success, failure, retry wait, cancel, lease expiry, re-queue and retry", async () => {
    const tasks: NewTask[] = Array.from({ length: 6 }, () => newTask({ maxAttempts: 2 }));
    await store.submit(tasks, T0);
    const usage = async (): Promise<number> => (await store.tenantUsage("acme")).tasks;
    expect(await usage()).toBe(6);
    const [ok, bad, flaky, cancelled, lost, gone] = tasks.map((t) => t.id) as [string, string, string, string, string, string];
    await store.claim("default", [ok, bad, flaky, lost, gone].map((id) => ({ id, workerId: "w" })), T0, LEASE, LEADER);
    await store.complete(
      [
        { id: ok, attempt: 1, outcome: { kind: "succeeded", result: {} } },
        { id: bad, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: false } },
        { id: flaky, attempt: 1, outcome: { kind: "failed", code: "E", message: "m", retryable: true } },
      ],
      T0 + 1,
    );
    // ok and bad ended; flaky waits to retry (unfinished).
    expect(await usage()).toBe(4);
    await store.cancel("acme", cancelled, "", T0 + 2);
    expect(await usage()).toBe(3);
    // A lost worker and an expired lease re-queue: still unfinished.
    await store.requeue([{ id: gone, attempt: 1 }], "worker gone", T0 + 3, LEADER);
    await store.expireLeases("default", T0 + LEASE + 1, 100, LEADER);
    expect(await usage()).toBe(3);
    expect((await store.get(lost))?.status).toBe(TaskStatus.QUEUED);
    // A dead task retried counts again.
    await store.retry("acme", bad, T0 + LEASE + 2);
    expect(await usage()).toBe(4);
    // Everything runs to its end: nothing is left counted, and the tenant's hash is gone.
    await store.promoteDue("default", T0 + 10 * LEASE, 100);
    const rest = [flaky, lost, gone, bad];
    const claimed = await store.claim("default", rest.map((id) => ({ id, workerId: "w" })), T0 + 10 * LEASE, LEASE, LEADER);
    expect(claimed.length).toBe(4);
    await store.complete(
      claimed.map((c) => ({ id: c.id, attempt: c.attempt, outcome: { kind: "succeeded" as const, result: {} } })),
      T0 + 10 * LEASE + 1,
    );
    expect(await store.tenantUsage("acme")).toEqual({ queues: new Map(), tasks: 0 });
    expect(await redis.exists(`${prefix}:tq:acme`)).toBe(0);
  });
});

describe("the leader's indexes", () => {
  /** The ready index, lanes sorted. */
  const ready = async (): Promise<Map<string, string[]>> =>
    new Map([...(await store.readyQueues())].map(([q, ts]) => [q, ts.sort()]));

  it("lists queues with QUEUED tasks and the tenants whose lanes hold them; claims, cancels and idle keep it exact", async () => {
    await store.submit([newTask({ queue: "a" }), newTask({ queue: "a", tenant: "beta" }), newTask({ queue: "b" })], T0);
    expect(await ready()).toEqual(new Map([["a", ["acme", "beta"]], ["b", ["acme"]]]));
    // A lane with tasks stays whatever idle says; paused, the queue leaves (keeping its lanes).
    expect(await store.idle("b", "acme")).toBe(false);
    await store.setPaused("b", true);
    expect(await store.idle("b", "acme")).toBe(true);
    expect([...(await ready()).keys()]).toEqual(["a"]);
    await store.setPaused("b", false);
    expect(await ready()).toEqual(new Map([["a", ["acme", "beta"]], ["b", ["acme"]]]));
    // Claiming beta's lane of `a` empties that lane only; then acme's empties the queue.
    const [betaTask] = await store.peekReady("a", 10, "beta");
    await store.claim("a", [{ id: betaTask?.id as string, workerId: "w" }], T0, LEASE, LEADER);
    expect(await ready()).toEqual(new Map([["a", ["acme"]], ["b", ["acme"]]]));
    const ids = (await store.peekReady("a", 10)).map((c) => ({ id: c.id, workerId: "w" }));
    await store.claim("a", ids, T0, LEASE, LEADER);
    expect(await ready()).toEqual(new Map([["b", ["acme"]]]));
    // Cancelling the last QUEUED task takes the queue out too; idle of an empty lane says it left.
    const [only] = await store.peekReady("b", 1);
    await store.cancel("acme", only?.id as string, "", T0);
    expect(await ready()).toEqual(new Map());
    expect(await store.idle("b", "acme")).toBe(true);
  });

  it("keeps one lane per tenant in a shared queue: a tenant's backlog is not in front of another tenant's task", async () => {
    const flood = Array.from({ length: 100 }, () => newTask({ tenant: "flood" }));
    await store.submit(flood, T0);
    const [calm] = await store.submit([newTask({ tenant: "calm", priority: 1 })], T0 + 1);
    // Each lane in its own order; all lanes merged (priority with aging, then age): flood first.
    expect((await store.peekReady("default", 1, "calm")).map((c) => c.id)).toEqual([calm?.task.id]);
    expect((await store.peekReady("default", 3, "flood")).map((c) => c.id)).toEqual(flood.slice(0, 3).map((t) => t.id));
    expect((await store.peekReady("default", 2)).map((c) => c.id)).toEqual(flood.slice(0, 2).map((t) => t.id));
    expect((await store.stats(T0 + 2)).find((q) => q.name === "default")?.queued).toBe(101n);
    // A lane's task cancelled or claimed leaves that lane only.
    await store.cancel("flood", flood[0]?.id as string, "", T0 + 2);
    await store.claim("default", [{ id: calm?.task.id as string, workerId: "w" }], T0 + 3, LEASE, LEADER);
    expect(await ready()).toEqual(new Map([["default", ["flood"]]]));
    expect((await store.stats(T0 + 4)).find((q) => q.name === "default")?.queued).toBe(99n);
  });

  it("moves tasks queued before lanes existed into their tenants' lanes when a leader takes over, oldest first", async () => {
    const old = [newTask(), newTask({ tenant: "beta" }), newTask()];
    await store.submit(old, T0);
    const [newer] = await store.submit([newTask()], T0 + 10);
    // As an older version left them: one list per priority, no lanes.
    const lane = (tenant: string) => `${prefix}:{default}:ready:2:${tenant}`;
    for (const t of old) await redis.lrem(lane(t.tenant), 1, t.id);
    await redis.srem(`${prefix}:{default}:lanes`, "beta");
    await redis.rpush(`${prefix}:{default}:ready:2`, ...old.map((t) => t.id));
    expect((await store.peekReady("default", 10)).map((c) => c.id)).toEqual([...old.map((t) => t.id), newer?.task.id]);
    await store.lead(["default"], LEADER, T0 + 20, LEASE);
    expect(await redis.exists(`${prefix}:{default}:ready:2`)).toBe(0);
    expect(await redis.lrange(lane("acme"), 0, -1)).toEqual([old[0]?.id, old[2]?.id, newer?.task.id]);
    expect(await redis.lrange(lane("beta"), 0, -1)).toEqual([old[1]?.id]);
    expect(await ready()).toEqual(new Map([["default", ["acme", "beta"]]]));
  });

  it("names queues by their next due task, lease deadline and result expiry, and moves them on after each pass", async () => {
    const [delayed] = await store.submit([newTask({ queue: "d", runAtMs: T0 + 5000 })], T0);
    await store.submit([newTask({ queue: "r", resultTtlMs: 2000 })], T0);
    expect(await store.dueQueues("due", T0 + 4999, 10)).toEqual([]);
    expect(await store.dueQueues("due", T0 + 5000, 10)).toEqual(["d"]);
    expect(await store.promoteDue("d", T0 + 5000, 10)).toBe(1);
    expect(await store.dueQueues("due", T0 + 1e9, 10)).toEqual([]);

    const [c] = await store.claim("d", [{ id: delayed?.task.id as string, workerId: "w" }], T0 + 6000, LEASE, LEADER);
    expect(await store.dueQueues("lease", T0 + 6000 + LEASE - 1, 10)).toEqual([]);
    expect(await store.dueQueues("lease", T0 + 6000 + LEASE, 10)).toEqual(["d"]);
    // A heartbeat pushes the deadline on: the pass finds nothing and moves the entry to it.
    await store.renew([{ id: c?.id as string, attempt: 1 }], T0 + 20_000, LEASE);
    expect(await store.expireLeases("d", T0 + 6000 + LEASE, 10, LEADER)).toEqual([]);
    expect(await store.dueQueues("lease", T0 + 20_000 + LEASE - 1, 10)).toEqual([]);
    expect(await store.dueQueues("lease", T0 + 20_000 + LEASE, 10)).toEqual(["d"]);

    const [r] = await store.peekReady("r", 1);
    await store.claim("r", [{ id: r?.id as string, workerId: "w" }], T0, LEASE, LEADER);
    await store.complete([{ id: r?.id as string, attempt: 1, outcome: { kind: "succeeded", result: {} } }], T0 + 100);
    expect(await store.dueQueues("reap", T0 + 2099, 10)).toEqual([]);
    expect(await store.dueQueues("reap", T0 + 2100, 10)).toEqual(["r"]);
  });
});

describe("empty queues", () => {
  it("are removed by the reap of their last task, unless paused; a new task brings one back", async () => {
    await store.submit([newTask({ queue: "gone", resultTtlMs: 1000 }), newTask({ queue: "kept", resultTtlMs: 1000 })], T0);
    await store.setPaused("kept", true);
    for (const queue of ["gone", "kept"]) {
      const ids = (await store.peekReady(queue, 10)).map((c) => ({ id: c.id, workerId: "w" }));
      // A paused queue's tasks are not claimed: cancel them instead.
      if (ids.length === 0) {
        const all = await store.list("acme", { queue }, 10, "");
        for (const t of all.tasks) await store.cancel("acme", t.id, "", T0 + 1);
        continue;
      }
      await store.claim(queue, ids, T0, LEASE, LEADER);
      await store.complete(ids.map((c) => ({ id: c.id, attempt: 1, outcome: { kind: "succeeded" as const, result: {} } })), T0 + 1);
    }
    expect(await store.queues()).toEqual(["gone", "kept"]);
    expect(await store.reapExpired("gone", T0 + 1001, 100)).toEqual({ reaped: 1, removed: true });
    expect(await store.reapExpired("kept", T0 + 1001, 100)).toEqual({ reaped: 1, removed: false });
    expect(await store.queues()).toEqual(["kept"]);
    for (const index of ["due", "lease", "reap"] as const) expect(await store.dueQueues(index, T0 + 1e12, 10)).toEqual([]);
    // Nothing of `gone` is left in Redis but the fence of the leader that claimed its task, which
    // expires by itself (lib.lua FENCE_TTL_MS).
    let cursor = "0";
    const left: string[] = [];
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:{gone}:*`, "COUNT", 1000);
      cursor = next;
      left.push(...keys);
    } while (cursor !== "0");
    expect(left).toEqual([`${prefix}:{gone}:epoch`]);
    expect(await redis.pttl(`${prefix}:{gone}:epoch`)).toBeGreaterThan(0);

    const [back] = await store.submit([newTask({ queue: "gone" })], T0 + 2000);
    expect(await store.queues()).toEqual(["gone", "kept"]);
    expect((await store.get(back?.task.id as string))?.queue).toBe("gone");
  });

  it("left over from before (no index entry) are found by a new leader and removed by the next reap", async () => {
    await store.setPaused("old", true);
    await store.setPaused("old", false);
    expect(await store.queues()).toEqual(["old"]);
    expect(await store.dueQueues("reap", T0, 10)).toEqual([]);
    await store.lead(await store.queues(), LEADER, T0, LEASE);
    expect(await store.dueQueues("reap", T0, 10)).toEqual(["old"]);
    expect(await store.reapExpired("old", T0, 100)).toEqual({ reaped: 0, removed: true });
    expect(await store.queues()).toEqual([]);
  });

  it("keep other queues of the same tag", async () => {
    // Queue names whose tags collide share a `}<tag>` entry (lib.lua register_queue).
    const names = new Map<string, string>();
    let pair: [string, string] | undefined;
    for (let i = 0; pair === undefined && i < 100_000; i++) {
      const q = `q${i}`;
      const other = names.get(queueTag(q));
      if (other !== undefined) pair = [other, q];
      else names.set(queueTag(q), q);
    }
    if (pair === undefined) throw new Error("no two queue names with the same tag");
    const [a, b] = pair;
    await store.submit([newTask({ queue: a, resultTtlMs: 1000 })], T0);
    const [kept] = await store.submit([newTask({ queue: b })], T0);
    const ids = (await store.peekReady(a, 10)).map((c) => ({ id: c.id, workerId: "w" }));
    await store.claim(a, ids, T0, LEASE, LEADER);
    await store.complete(ids.map((c) => ({ id: c.id, attempt: 1, outcome: { kind: "succeeded" as const, result: {} } })), T0 + 1);
    expect(await store.reapExpired(a, T0 + 2000, 100)).toEqual({ reaped: 1, removed: true });
    expect(await store.queues()).toEqual([b]);
    expect((await store.get(kept?.task.id as string))?.queue).toBe(b);
  });
});
