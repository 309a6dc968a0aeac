import { Redis } from "ioredis";
import { ulid } from "ulid";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { requestTaskIds } from "../../services/scheduler/submit.js";
import { TaskStore, type NewTask } from "../../services/scheduler/task-store.js";
import { uniquePrefix } from "../support/ids.js";
import { newTask } from "../support/tasks.js";

const T0 = 1_700_000_000_000;

function task(id: string, over: Partial<NewTask> = {}): NewTask {
  return newTask({ payload: { n: 1 }, ...over, id });
}

describe("a submit repeated with the same task ids (a request retried on another replica)", () => {
  let redis: Redis;
  let store: TaskStore;
  let prefix: string;
  beforeEach(() => {
    prefix = uniquePrefix("sr");
    redis = new Redis(inject("redisUrl"));
    store = new TaskStore({ redis, prefix, agingMsPerLevel: 1000, logger: silentLogger() });
  });
  afterEach(async () => {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  });

  it("stores nothing new and returns what the first attempt stored, even after it changed", async () => {
    const ids = requestTaskIds(ulid(T0), "acme");
    const batch = [task(ids(0, "default")), task(ids(1, "q2"), { queue: "q2" }), task(ids(2, "default"))];
    const first = await store.submit(batch, T0);
    expect(first.map((r) => r.existing)).toEqual([false, false, false]);
    await store.cancel("acme", ids(1, "q2"), "changed meanwhile", T0 + 5);
    const again = await store.submit(batch, T0 + 10);
    expect(again.map((r) => r.existing)).toEqual([true, true, true]);
    expect(again.map((r) => r.task.id)).toEqual(first.map((r) => r.task.id));
    expect(again[1]?.task.status).toBe(TaskStatus.CANCELLED);
    const page = await store.list("acme", {}, 100, "");
    expect(page.tasks.map((t) => t.id).sort()).toEqual(batch.map((t) => t.id).sort());
  });

  it("never returns another tenant's task under a taken id", async () => {
    const id = requestTaskIds(ulid(T0), "acme")(0, "default");
    await store.submit([task(id)], T0);
    await expect(store.submit([task(id, { tenant: "globex" })], T0)).rejects.toThrow(/taken by another tenant/);
    expect((await store.list("globex", {}, 10, "")).tasks).toEqual([]);
    expect((await store.get(id))?.tenant).toBe("acme");
  });
});
