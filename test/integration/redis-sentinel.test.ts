import { Code, ConnectError } from "@connectrpc/connect";
import type { Redis } from "ioredis";
import { afterEach, describe, expect, it } from "vitest";
import { isDependencyUnavailable } from "../../lib/errors.js";
import { silentLogger } from "../../lib/logger.js";
import { FailoverAwareSentinelConnector, ReplicaWaiter, createRedis } from "../../lib/redis.js";
import { TaskStore, type NewTask } from "../../services/scheduler/task-store.js";
import { redisCommand, startRedis, startSentinelGroup, type Backend, type SentinelGroup } from "../support/backends.js";
import { uniquePrefix } from "../support/ids.js";
import { newTask } from "../support/tasks.js";
import { waitFor } from "../support/wait.js";


function task(): NewTask {
  return newTask({ resultTtlMs: 60_000 });
}

/** The port of the server a client is connected to, as that server reports it. */
async function serverPort(client: Redis): Promise<number> {
  const info = await client.info("server");
  return Number(/^tcp_port:(\d+)/m.exec(info)?.[1]);
}

/** Resolves with the rejection of `p` (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection");
}

describe("Redis through Sentinel (lib/redis.ts)", () => {
  let group: SentinelGroup | undefined;
  const clients: Redis[] = [];
  const stores: TaskStore[] = [];
  const standalone: Backend[] = [];
  const client = (url: string, opts: Parameters<typeof createRedis>[1] = {}): Redis => {
    const c = createRedis(url, opts);
    c.on("error", () => undefined);
    clients.push(c);
    return c;
  };

  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
    for (const c of clients.splice(0)) c.disconnect();
    await group?.stop();
    group = undefined;
    for (const b of standalone.splice(0)) await b.stop();
  });

  /**
   * Publishes on `channel` through `pub` until `sub` gets a message (a resubscription takes a
   * moment after a reconnect). Returns how long it took.
   */
  async function messagesFlowAgain(pub: Redis, sub: Redis, channel: string): Promise<number> {
    const t0 = Date.now();
    let got = 0;
    const onMessage = (ch: string): void => {
      if (ch === channel) got++;
    };
    sub.on("message", onMessage);
    try {
      await waitFor(
        async () => {
          await pub.publish(channel, "ping").catch(() => undefined);
          return got > 0;
        },
        { timeoutMs: 20_000, intervalMs: 50, what: `a message on ${channel}` },
      );
    } finally {
      sub.off("message", onMessage);
    }
    return Date.now() - t0;
  }

  it("follows a SENTINEL FAILOVER: commands reach the new master and the subscriber, a duplicate, gets messages again", async () => {
    group = await startSentinelGroup({ replicas: 1 });
    const redis = client(group.url, { maxRetriesPerRequest: 3, enableAutoPipelining: false });
    const sub = redis.duplicate();
    sub.on("error", () => undefined);
    clients.push(sub);
    expect(sub.options.sentinels).toEqual(redis.options.sentinels);
    expect(sub.options.Connector).toBe(FailoverAwareSentinelConnector);
    const channel = uniquePrefix("ch");
    await sub.subscribe(channel);
    const oldMaster = await serverPort(redis);
    expect(oldMaster).toBe(await group.masterPort());
    await redis.set("k", "before");
    await messagesFlowAgain(redis, sub, channel);

    // Writes keep flowing while the master changes: plain ones on `redis`, and durable ones
    // (each confirmed by WAIT on the replica) on a second client.
    const durable = client(group.url);
    const waiter = new ReplicaWaiter(durable, { replicas: 1, timeoutMs: 500 });
    const sentinel = group.sentinels[0] as Backend;
    const acked: { value: number; at: number }[] = [];
    const confirmed: number[] = [];
    let failed = 0;
    let unconfirmed = 0;
    const readyAt: number[] = [];
    redis.on("ready", () => readyAt.push(Date.now()));
    let stop = false;
    const deadline = Date.now() + 25_000;
    const writer = (async () => {
      for (let i = 0; !stop && Date.now() < deadline; i++) {
        try {
          await redis.rpush("log", String(i));
          acked.push({ value: i, at: Date.now() });
        } catch {
          failed++;
        }
      }
    })();
    const durableWriter = (async () => {
      for (let i = 0; !stop && Date.now() < deadline; i++) {
        try {
          const ticket = await waiter.begin();
          await durable.rpush("dlog", String(i));
          await waiter.confirm(ticket);
          confirmed.push(i);
        } catch {
          unconfirmed++;
          // Refused at once while the master has no replica: pace the retries.
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    })();
    await waitFor(() => acked.length > 50 && confirmed.length > 50, { what: "writes before the failover" });
    const failoverAt = Date.now();
    expect(await redisCommand(sentinel.port, "SENTINEL", "FAILOVER", group.masterName)).toBe("OK");
    const newMaster = await group.waitHealthy({ notPort: oldMaster, replicas: 1 });
    expect(newMaster).not.toBe(oldMaster);
    await waitFor(async () => (await serverPort(redis)) === newMaster, { timeoutMs: 15_000, what: "the client on the new master" });
    const atSwitch = { acked: acked.length, confirmed: confirmed.length };
    await waitFor(() => acked.length > atSwitch.acked + 50 && confirmed.length > atSwitch.confirmed + 20, {
      timeoutMs: 15_000,
      what: "plain and confirmed writes after the failover",
    });
    stop = true;
    await Promise.all([writer, durableWriter]);

    expect(await redis.get("k")).toBe("before");
    await redis.set("k", "after");
    expect(await redisCommand(newMaster, "GET", "k")).toBe("after");
    expect(await redis.call("ROLE").then((r) => (r as unknown[])[0])).toBe("master");
    // Sentinel promotes the replica while the old master still takes writes until it is turned
    // into a replica (its data then discarded): plain writes acknowledged in between are lost —
    // but only before the client moved to the new master. Confirmed writes are never lost.
    const log = new Set(((await redisCommand(newMaster, "LRANGE", "log", 0, -1)) as string[]).map(Number));
    const lost = acked.filter((a) => !log.has(a.value));
    const switchedAt = Math.max(...readyAt);
    expect(lost.filter((a) => a.at > switchedAt)).toEqual([]);
    const dlog = new Set(((await redisCommand(newMaster, "LRANGE", "dlog", 0, -1)) as string[]).map(Number));
    expect(confirmed.filter((v) => !dlog.has(v))).toEqual([]);

    const took = await messagesFlowAgain(redis, sub, channel);
    expect(await serverPort(sub)).toBe(newMaster);
    const lostSpan = lost.length === 0 ? 0 : (lost[lost.length - 1] as { at: number }).at - (lost[0] as { at: number }).at;
    process.stdout.write(
      `SENTINEL FAILOVER: plain writes ${acked.length} acknowledged, ${lost.length} of them lost (acknowledged over ${lostSpan} ms ` +
        `by the old master), ${failed} failed; confirmed writes ${confirmed.length}, 0 lost, ${unconfirmed} not confirmed; ` +
        `client on the new master ${switchedAt - failoverAt} ms after SENTINEL FAILOVER; messages again after ${took} ms\n`,
    );
  }, 90_000);

  it("survives kill -9 of the master: after the promotion commands reach the new master and the subscriber gets messages again", async () => {
    group = await startSentinelGroup({ replicas: 1 });
    const redis = client(group.url, { maxRetriesPerRequest: 3, enableAutoPipelining: false });
    const sub = redis.duplicate();
    sub.on("error", () => undefined);
    clients.push(sub);
    const channel = uniquePrefix("ch");
    await sub.subscribe(channel);
    await messagesFlowAgain(redis, sub, channel);
    await redis.set("k", "before");
    const oldMaster = (await group.masterPort()) as number;
    // Let the replica receive that write before the master dies (asynchronous replication).
    expect(await redis.wait(1, 2000)).toBe(1);

    const t0 = Date.now();
    await group.kill(oldMaster);
    // A command issued right away is either answered by the new master or fails: it never hangs.
    const during = await Promise.race([
      redis.get("k").then(
        (v) => `answered ${v}`,
        (err: Error) => `failed: ${err.message}`,
      ),
      new Promise<string>((r) => setTimeout(() => r("hung"), 15_000).unref()),
    ]);
    expect(during).not.toBe("hung");
    const newMaster = await group.waitHealthy({ notPort: oldMaster, replicas: 0 });
    const promoted = Date.now() - t0;
    await waitFor(async () => (await redis.set("k2", "after").catch(() => undefined)) === "OK", {
      timeoutMs: 15_000,
      what: "a write accepted after the promotion",
    });
    const writable = Date.now() - t0;
    expect(await serverPort(redis)).toBe(newMaster);
    expect(await redis.get("k")).toBe("before");
    expect(await redisCommand(newMaster, "GET", "k2")).toBe("after");
    const again = await messagesFlowAgain(redis, sub, channel);
    expect(await serverPort(sub)).toBe(newMaster);
    process.stdout.write(
      `kill -9 of the master: promoted after ${promoted} ms, writable again after ${writable} ms (the command issued at the kill: ${during}), messages again ${again} ms later\n`,
    );
  }, 90_000);

  it("survives a failover announced while it is asking hung Sentinels for the master", async () => {
    // ioredis 6.0.0's own failoverDetector ends the client for good in this case.
    group = await startSentinelGroup({ replicas: 1, sentinels: 5 });
    const redis = client(group.url, { maxRetriesPerRequest: 3 });
    await redis.set("k", "before");
    expect(await redis.wait(1, 2000)).toBe(1);
    const oldMaster = (await group.masterPort()) as number;
    const [s0, s1, live] = group.sentinels as [Backend, Backend, Backend];
    // Two Sentinels hang: every reconnect attempt spends most of its time waiting on them.
    s0.process.kill("SIGSTOP");
    s1.process.kill("SIGSTOP");
    try {
      const t0 = Date.now();
      await group.kill(oldMaster);
      const newMaster = await waitFor(
        async () => {
          const r = await redisCommand(live.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", group?.masterName ?? "");
          const port = Array.isArray(r) ? Number(r[1]) : oldMaster;
          return port !== oldMaster ? port : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 50, what: "the live Sentinels' promotion" },
      );
      const promoted = Date.now() - t0;
      await waitFor(async () => (await redis.set("k2", "after").catch(() => undefined)) === "OK", {
        timeoutMs: 30_000,
        what: "a write accepted after the promotion",
      });
      expect(redis.status).toBe("ready");
      expect(await serverPort(redis)).toBe(newMaster);
      expect(await redis.get("k")).toBe("before");
      process.stdout.write(`kill -9 with 2 of 5 Sentinels hung: promoted after ${promoted} ms, writable after ${Date.now() - t0} ms\n`);
    } finally {
      s0.process.kill("SIGCONT");
      s1.process.kill("SIGCONT");
    }
  }, 90_000);

  it("fails a call to a hung Redis after the command timeout instead of hanging", async () => {
    const b = await startRedis();
    standalone.push(b);
    const redis = client(b.address, { commandTimeout: 300, maxRetriesPerRequest: 1 });
    expect(await redis.ping()).toBe("PONG");
    b.process.kill("SIGSTOP");
    try {
      const t0 = Date.now();
      const err = await rejection(redis.get("x"));
      const took = Date.now() - t0;
      expect((err as Error).message).toMatch(/Command timed out/);
      expect(took).toBeGreaterThanOrEqual(250);
      expect(took).toBeLessThan(3000);
    } finally {
      b.process.kill("SIGCONT");
    }
    await waitFor(async () => (await redis.ping().catch(() => undefined)) === "PONG", { what: "the connection back" });
  });

  it("with waitReplicas, confirms submits on the replica, fails them UNAVAILABLE when it is gone, and refuses before storing until it is back", async () => {
    group = await startSentinelGroup({ replicas: 1 });
    const redis = client(group.url, { maxRetriesPerRequest: 3, enableAutoPipelining: false, commandTimeout: 3000 });
    const prefix = uniquePrefix("wait");
    const store = new TaskStore({ redis, prefix, waitReplicas: 1, waitTimeoutMs: 400, logger: silentLogger() });
    stores.push(store);
    const master = (await group.masterPort()) as number;
    const replica = group.ports.find((p) => p !== master) as number;

    // 1. With the replica: the submit returns, and the replica has the task already.
    const [ok] = await store.submit([task()], Date.now());
    const okId = ok?.task.id as string;
    expect(await redisCommand(replica, "EXISTS", `${prefix}:{default}:t:${okId}`)).toBe(1);

    // 2. Replica gone: the next submit waits the timeout, then fails UNAVAILABLE with a retry
    // hint, though the master stored the task.
    await group.kill(replica);
    await waitFor(async () => ((await redisCommand(master, "ROLE")) as unknown[][])[2]?.length === 0, { what: "the master without replicas" });
    const lost = task();
    let t0 = Date.now();
    const err = await rejection(store.submit([lost], Date.now()));
    const waited = Date.now() - t0;
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).metadata.get("retry-after")).toBe("1");
    expect((err as ConnectError).rawMessage).toMatch(
      /Redis replication not confirmed \(0 of 1 replicas acknowledged within 400 ms\): the tasks may have been stored; retry with the same idempotency key/,
    );
    expect(waited).toBeGreaterThanOrEqual(350);
    expect(await store.get(lost.id)).toBeDefined();

    // 3. While the replica stays away, submits are refused at once and store nothing.
    const refused = task();
    t0 = Date.now();
    const err2 = await rejection(store.submit([refused], Date.now()));
    expect(Date.now() - t0).toBeLessThan(350);
    expect((err2 as ConnectError).code).toBe(Code.Unavailable);
    expect((err2 as ConnectError).rawMessage).toMatch(/0 of the 1 Redis replicas required are connected: nothing was stored/);
    expect(await store.get(refused.id)).toBeUndefined();

    // 4. The replica back (a restart, resynced by the master): submits are confirmed again.
    await group.restart(replica, master);
    const back = task();
    await waitFor(async () => (await store.submit([back], Date.now()).catch(() => undefined)) !== undefined, {
      timeoutMs: 15_000,
      what: "a confirmed submit with the replica back",
    });
    expect(await redisCommand(replica, "EXISTS", `${prefix}:{default}:t:${back.id}`)).toBe(1);
  }, 90_000);

  it("with waitReplicas, WAITs on a connection of the submits' own, and confirms a task found stored only once the replica has it", async () => {
    group = await startSentinelGroup({ replicas: 1 });
    const redis = client(group.url, { maxRetriesPerRequest: 3, enableAutoPipelining: false, commandTimeout: 3000 });
    const prefix = uniquePrefix("waitconn");
    const store = new TaskStore({ redis, prefix, waitReplicas: 1, waitTimeoutMs: 3000, logger: silentLogger() });
    stores.push(store);
    // Another scheduler replica: connections of its own.
    const other = new TaskStore({ redis: client(group.url, { enableAutoPipelining: false }), prefix, waitReplicas: 1, waitTimeoutMs: 500, logger: silentLogger() });
    stores.push(other);
    const master = (await group.masterPort()) as number;
    const replica = group.ports.find((p) => p !== master) as number;
    const pid = Number(/^process_id:(\d+)/m.exec(String(await redisCommand(replica, "INFO", "server")))?.[1]);
    expect(pid).toBeGreaterThan(0);
    await store.submit([task()], Date.now());

    // The replica stops answering (the master still counts it connected): WAITs time out.
    process.kill(pid, "SIGSTOP");
    const keyed = { ...task(), idempotencyKey: "k1" };
    try {
      const submitted = rejection(store.submit([keyed], Date.now()));
      // The submit's WAIT blocks on the master (the task is stored: the WAIT follows its script).
      const blocked = async (): Promise<number> => Number(/^blocked_clients:(\d+)/m.exec(String(await redisCommand(master, "INFO", "clients")))?.[1]);
      await waitFor(async () => (await blocked()) === 1, { what: "the submit's WAIT blocking" });
      // It holds its own connection only: a read on the store's connection is answered while it
      // still blocks (on a shared connection the read would queue behind it for its 3 s).
      expect((await store.get(keyed.id))?.id).toBe(keyed.id);
      expect(await blocked()).toBe(1);
      const err = (await submitted) as ConnectError;
      expect(err.code).toBe(Code.Unavailable);
      expect(isDependencyUnavailable(err)).toBe(true);
      expect(err.rawMessage).toMatch(/0 of 1 replicas acknowledged within 3000 ms/);

      // The retry reaches the other replica, which finds the task by its idempotency key: its own
      // connection never wrote it, yet it must not confirm it while the replica lacks it.
      const retried = (await rejection(other.submit([{ ...task(), idempotencyKey: "k1" }], Date.now()))) as ConnectError;
      expect(retried.code).toBe(Code.Unavailable);
      expect(retried.rawMessage).toMatch(/0 of 1 replicas acknowledged within 500 ms/);
    } finally {
      process.kill(pid, "SIGCONT");
    }
    // The replica catches up: the retry is confirmed, with the task stored first.
    const confirmed = await waitFor(
      async () => (await other.submit([{ ...task(), idempotencyKey: "k1" }], Date.now()).catch(() => undefined))?.[0],
      { timeoutMs: 15_000, what: "the retry confirmed" },
    );
    expect(confirmed.existing).toBe(true);
    expect(confirmed.task.id).toBe(keyed.id);
    expect(await redisCommand(replica, "EXISTS", `${prefix}:{default}:t:${keyed.id}`)).toBe(1);
  }, 60_000);

  it("does not confirm writes across a reconnect: a WAIT on a new connection would cover nothing", async () => {
    group = await startSentinelGroup({ replicas: 1 });
    const redis = client(group.url);
    const waiter = new ReplicaWaiter(redis, { replicas: 1, timeoutMs: 1000 });
    const ticket = await waiter.begin();
    await redis.set("x", "1");
    await waiter.confirm(ticket);

    const stale = await waiter.begin();
    await redis.set("x", "2");
    const ready = new Promise((r) => redis.once("ready", r));
    redis.disconnect(true);
    await ready;
    const err = await rejection(waiter.confirm(stale));
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toMatch(/the Redis connection was re-established during the call/);
    // A call begun after the reconnect is confirmed.
    const fresh = await waiter.begin();
    await redis.set("x", "3");
    await waiter.confirm(fresh);
  });
});
