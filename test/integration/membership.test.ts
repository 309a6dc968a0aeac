import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Etcd3, type IOptions, type IRangeResponse, type MultiRangeBuilder } from "etcd3";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import { createLogger, silentLogger } from "../../lib/logger.js";
import { Membership } from "../../lib/membership.js";
import { Registration } from "../../lib/registration.js";
import { startEtcd } from "../support/backends.js";
import { uniquePrefix } from "../support/ids.js";
import { freePort } from "../support/ports.js";
import { waitFor } from "../support/wait.js";

interface Member {
  slots: number;
}

type Event = string;

const parse = (_id: string, v: string): Member | undefined => {
  try {
    const o = JSON.parse(v) as unknown;
    return typeof o === "object" && o !== null && typeof (o as Member).slots === "number" ? (o as Member) : undefined;
  } catch {
    return undefined;
  }
};

const value = (slots: number): string => JSON.stringify({ slots });

/** Records events as compact strings: `put a 2 (1)`, `delete b (3)`. */
function record(m: Membership<Member>): Event[] {
  const events: Event[] = [];
  m.on("put", (id, v, prev) => events.push(`put ${id} ${v.slots}${prev === undefined ? "" : ` (${prev.slots})`}`));
  m.on("delete", (id, prev) => events.push(`delete ${id} (${prev.slots})`));
  return events;
}

/**
 * An etcd client whose next range read, once answered, waits for `hook` before returning:
 * it opens the window between a Membership's read and its watch, where a compaction can land.
 */
class RacingClient extends Etcd3 {
  hook: (() => Promise<void>) | undefined;

  constructor(options: IOptions) {
    super(options);
  }

  override getAll(): MultiRangeBuilder {
    const builder = super.getAll();
    const hook = this.hook;
    if (hook === undefined) return builder;
    this.hook = undefined;
    const exec = builder.exec.bind(builder);
    builder.exec = async (): Promise<IRangeResponse> => {
      const res = await exec();
      await hook();
      return res;
    };
    return builder;
  }
}

describe("Membership", () => {
  let client: Etcd3;
  let prefix: string;
  const cleanup: (() => Promise<void> | void)[] = [];

  beforeEach(() => {
    client = new Etcd3({ hosts: inject("etcdEndpoint") });
    prefix = `/${uniquePrefix("mem")}/workers/`;
  });

  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
    await client.delete().prefix(prefix);
    client.close();
  });

  function membership(c: Etcd3 = client, logger = silentLogger()): Membership<Member> {
    const m = new Membership<Member>({ client: c, prefix, parse, logger });
    cleanup.push(() => m.close());
    return m;
  }

  it("sees the initial members, then puts, updates and deletes in order", async () => {
    await client.put(`${prefix}a`).value(value(1));
    await client.put(`${prefix}b`).value(value(2));
    await client.put(`${prefix}bad`).value("not json");
    const m = membership();
    const events = record(m);
    await m.start();
    expect(events).toEqual(["put a 1", "put b 2"]);
    expect(m.snapshot()).toEqual(new Map([["a", { slots: 1 }], ["b", { slots: 2 }]]));
    expect(m.state).toBe("running");

    await client.put(`${prefix}c`).value(value(3));
    await client.put(`${prefix}a`).value(value(4));
    await client.delete().key(`${prefix}b`);
    await client.put(`${prefix}bad`).value(value(5)); // fixed: now a member
    await client.put(`${prefix}c`).value("{}"); // malformed: no longer a member
    await client.put(`${prefix}sub/x`).value(value(6)); // ids may contain slashes
    await waitFor(() => events.length >= 8, { what: "events" });
    expect(events).toEqual([
      "put a 1",
      "put b 2",
      "put c 3",
      "put a 4 (1)",
      "delete b (2)",
      "put bad 5",
      "delete c (3)",
      "put sub/x 6",
    ]);
    expect(m.get("a")).toEqual({ slots: 4 });
    expect(m.get("b")).toBeUndefined();
    expect([...m.snapshot().keys()].sort()).toEqual(["a", "bad", "sub/x"]);
    expect(m.resyncs).toBe(0);
  });

  it("keeps going when a listener throws", async () => {
    const m = membership();
    m.on("put", () => {
      throw new Error("listener bug");
    });
    const events = record(m);
    await m.start();
    await client.put(`${prefix}a`).value(value(1));
    await client.put(`${prefix}b`).value(value(2));
    await waitFor(() => events.length === 2, { what: "events" });
    expect(events).toEqual(["put a 1", "put b 2"]);
  });

  it("emits nothing after close(), which can be called twice", async () => {
    const m = membership();
    const events = record(m);
    await m.start();
    await m.close();
    await m.close();
    expect(m.state).toBe("stopped");
    await client.put(`${prefix}a`).value(value(1));
    // A second, live membership sees the put: by then the closed one would have seen it too.
    const live = membership();
    const liveEvents = record(live);
    await live.start();
    await client.put(`${prefix}b`).value(value(2));
    await waitFor(() => liveEvents.includes("put b 2"), { what: "live membership" });
    expect(events).toEqual([]);
    await expect(m.start()).rejects.toThrow(/stopped/);
  });

  it("rejects start() when etcd cannot be reached, and can start later", async () => {
    const nowhere = new Etcd3({ hosts: `127.0.0.1:${await freePort()}` });
    cleanup.push(() => nowhere.close());
    const m = membership(nowhere);
    await expect(m.start()).rejects.toThrow();
    expect(m.state).toBe("idle");
  });

  it("re-syncs when its watch start revision was compacted, with no duplicate events", async () => {
    // Compaction is global to an etcd: use a private one so no other test loses its history.
    const etcd = await startEtcd();
    cleanup.push(() => etcd.stop());
    const writer = new Etcd3({ hosts: etcd.address });
    cleanup.push(() => writer.close());
    for (const [id, slots] of [["a", 1], ["b", 2], ["c", 3], ["e", 5]] as const) {
      await writer.put(`${prefix}${id}`).value(value(slots));
    }
    const racing = new RacingClient({ hosts: etcd.address });
    cleanup.push(() => racing.close());
    // After the initial read and before the watch starts: many changes, then a compaction.
    racing.hook = async () => {
      for (let i = 0; i < 20; i++) await writer.put(`${prefix}b`).value(value(100 + i));
      await writer.delete().key(`${prefix}c`);
      await writer.put(`${prefix}d`).value(value(4));
      await writer.delete().key(`${prefix}e`);
      const res = await writer.put(`${prefix}e`).value(value(50));
      await writer.kv.compact({ revision: res.header.revision, physical: true });
    };
    const logs: string[] = [];
    const m = membership(racing, capturingLogger(logs));
    const events = record(m);
    await m.start();
    expect(events).toEqual(["put a 1", "put b 2", "put c 3", "put e 5"]);

    await waitFor(() => m.resyncs >= 1, { what: "re-sync after compaction" });
    expect(logs).toContain("watch cancelled by etcd, re-syncing");
    await writer.put(`${prefix}f`).value(value(6));
    await waitFor(() => events.includes("put f 6"), { what: "watch after re-sync" });
    expect(events.slice(4)).toEqual([
      "put b 119 (2)",
      "put d 4",
      "delete e (5)", // deleted and created again while the view was stale
      "put e 50",
      "delete c (3)",
      "put f 6",
    ]);
    expect(Object.fromEntries(m.snapshot())).toEqual({
      a: { slots: 1 },
      b: { slots: 119 },
      d: { slots: 4 },
      e: { slots: 50 },
      f: { slots: 6 },
    });
  });
});

/** A private etcd that can be killed and started again on the same port and data dir. */
interface RestartableEtcd {
  readonly endpoint: string;
  start(): Promise<void>;
  kill(): Promise<void>;
  /** Kills it and removes its data dir. */
  destroy(): Promise<void>;
}

// test/support/backends.ts starts etcd on fresh ports and a fresh dir only; a restart that keeps
// the data needs both fixed, hence this helper.
async function restartableEtcd(): Promise<RestartableEtcd> {
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-etcd-restart-"));
  const port = await freePort();
  const peerPort = await freePort();
  let child: ChildProcess | undefined;
  const portOpen = (): Promise<boolean> =>
    new Promise((resolve) => {
      const s = createConnection({ port, host: "127.0.0.1" });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
  const kill = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((resolve) => c.once("exit", resolve));
    c.kill("SIGKILL");
    await gone;
  };
  return {
    endpoint: `127.0.0.1:${port}`,
    async start() {
      let stderr = "";
      const c = spawn(
        "etcd",
        [
          "--name", "restart",
          "--data-dir", join(dir, "data"),
          "--listen-client-urls", `http://127.0.0.1:${port}`,
          "--advertise-client-urls", `http://127.0.0.1:${port}`,
          "--listen-peer-urls", `http://127.0.0.1:${peerPort}`,
          "--initial-advertise-peer-urls", `http://127.0.0.1:${peerPort}`,
          "--initial-cluster", `restart=http://127.0.0.1:${peerPort}`,
          "--log-level", "error",
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      c.stderr?.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-2000)));
      child = c;
      await waitFor(
        async () => {
          if (c.exitCode !== null) throw new Error(`etcd exited: ${stderr}`);
          return portOpen();
        },
        { timeoutMs: 20_000, what: `etcd on port ${port}` },
      );
    },
    kill,
    async destroy() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A logger at debug level whose messages land in `lines`. */
function capturingLogger(lines: string[]): ReturnType<typeof createLogger> {
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n")) {
        if (line === "") continue;
        lines.push((JSON.parse(line) as { msg: string }).msg);
      }
      done();
    },
  });
  return createLogger("test", { level: "debug", destination });
}

describe("across etcd restarts", () => {
  const cleanup: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  it("re-syncs a Membership after etcd restarts, with each change reported once", async () => {
    const etcd = await restartableEtcd();
    cleanup.push(() => etcd.destroy());
    await etcd.start();
    const client = new Etcd3({ hosts: etcd.endpoint });
    cleanup.push(() => client.close());
    const prefix = "/taskmesh/workers/";
    await client.put(`${prefix}a`).value(value(1));
    await client.put(`${prefix}b`).value(value(2));
    await client.put(`${prefix}c`).value(value(3));

    const m = new Membership<Member>({ client, prefix, parse, logger: silentLogger() });
    cleanup.push(() => m.close());
    const events = record(m);
    await m.start();
    expect(events).toEqual(["put a 1", "put b 2", "put c 3"]);

    await etcd.kill();
    await etcd.start();
    // Changes right after the restart: seen by the re-sync's read or by its watch, once either way.
    const writer = new Etcd3({ hosts: etcd.endpoint });
    cleanup.push(() => writer.close());
    await waitFor(() => writer.get("ping").then(() => true), { timeoutMs: 20_000, what: "etcd back" });
    await writer.put(`${prefix}b`).value(value(20));
    await writer.delete().key(`${prefix}c`);
    await writer.put(`${prefix}d`).value(value(4));

    await waitFor(() => m.resyncs >= 1 && m.get("d") !== undefined, { timeoutMs: 25_000, what: "re-sync" });
    await writer.put(`${prefix}e`).value(value(5));
    await waitFor(() => events.includes("put e 5"), { timeoutMs: 10_000, what: "watch after restart" });
    expect(events.slice(3).sort()).toEqual(["delete c (3)", "put b 20 (2)", "put d 4", "put e 5"]);
    expect(events.at(-1)).toBe("put e 5");
    expect([...m.snapshot().keys()].sort()).toEqual(["a", "b", "d", "e"]);
  });

  it("registers again after etcd was unreachable for longer than the lease TTL", async () => {
    const etcd = await restartableEtcd();
    cleanup.push(() => etcd.destroy());
    await etcd.start();
    const client = new Etcd3({ hosts: etcd.endpoint });
    cleanup.push(() => client.close());
    const logs: string[] = [];
    const key = "/taskmesh/workers/w1";
    let slots = 1;
    const r = await Registration.create({
      client,
      key,
      value: () => ({ slots }),
      ttlSeconds: 2,
      logger: capturingLogger(logs),
    });
    cleanup.push(() => r.close());
    const first = await r.leaseId();

    await etcd.kill();
    // etcd3 declares the lease lost after 2 × TTL without a keepalive.
    await waitFor(() => logs.includes("registration lease lost, registering again"), {
      timeoutMs: 15_000,
      what: "lease lost",
    });
    slots = 2;
    await r.update(); // while re-registering: remembered, written on registration
    await etcd.start();
    const kv = await waitFor(
      async () => {
        const got = (await client.get(key).exec()).kvs[0];
        return got !== undefined && got.lease !== first ? got : undefined;
      },
      { timeoutMs: 25_000, what: "re-registration" },
    );
    expect(JSON.parse(kv.value.toString())).toEqual({ slots: 2 });
    // The key can be read back a moment before the put's own reply reaches the registration.
    await waitFor(async () => (await r.leaseId()) === kv.lease, { what: "registration to adopt the lease" });
    // The old lease, restored by the restart, expires without taking the key along.
    await waitFor(
      async () => (await client.leaseClient.leaseTimeToLive({ ID: first as string })).TTL === "-1",
      { timeoutMs: 10_000, what: "old lease expiry" },
    );
    expect(JSON.parse((await client.get(key).string()) as string)).toEqual({ slots: 2 });
    await r.close();
    expect(await client.get(key).string()).toBeNull();
  });
});
