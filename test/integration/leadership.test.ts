import { afterEach, describe, expect, inject, it } from "vitest";
import { createEtcd, type EtcdClient } from "../../lib/etcd.js";
import { silentLogger } from "../../lib/logger.js";
import { Leadership } from "../../services/scheduler/leadership.js";
import { uniquePrefix } from "../support/ids.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { waitFor } from "../support/wait.js";

describe("Leadership", () => {
  const cleanup: (() => Promise<unknown> | unknown)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  /** A candidate whose etcd link goes through a proxy the test can cut; records what it emits. */
  async function candidate(root: string, name: string, ttlSeconds: number) {
    const proxy: TcpProxy = await startTcpProxy(inject("etcdEndpoint"));
    const client: EtcdClient = createEtcd({ endpoints: [proxy.address], logger: silentLogger() });
    const leadership = new Leadership({ client, root, ttlSeconds, logger: silentLogger() });
    const events: string[] = [];
    leadership.on("elected", (e) => events.push(`elected ${e}`));
    leadership.on("lost", () => events.push("lost"));
    leadership.start(name);
    cleanup.push(async () => {
      await proxy.heal();
      await leadership.close();
      client.close();
      await proxy.close();
    });
    return { proxy, leadership, events };
  }

  it("pauses while etcd does not confirm its lease and leads again with the same epoch if it does in time", async () => {
    const root = `/${uniquePrefix("lead")}/`;
    const a = await candidate(root, "a", 3);
    await waitFor(() => a.leadership.isLeader, { what: "a leads" });
    const epoch = a.leadership.epoch;
    a.proxy.blackhole();
    const cutAt = Date.now();
    // Not confirmed for ttl − margin (2.7 s): it stops leading before etcd could let the lease go...
    await waitFor(() => a.events.at(-1) === "lost", { timeoutMs: 5000, what: "a paused" });
    const pausedAfter = Date.now() - cutAt;
    expect(pausedAfter).toBeGreaterThan(1700);
    expect(pausedAfter).toBeLessThan(3000);
    expect(a.leadership.isLeader).toBe(false);
    // ... and etcd answers again while the lease still lives: a leads again, same epoch.
    await a.proxy.heal();
    await waitFor(() => a.leadership.isLeader, { timeoutMs: 5000, what: "a leads again" });
    expect(a.events).toEqual([`elected ${epoch}`, "lost", `elected ${epoch}`]);
    expect(await a.leadership.leader()).toBe("a");
  });

  it("hands over to the next candidate when its lease runs out, and campaigns again behind it", async () => {
    const root = `/${uniquePrefix("lead")}/`;
    const a = await candidate(root, "a", 2);
    await waitFor(() => a.leadership.isLeader, { what: "a leads" });
    const b = await candidate(root, "b", 2);
    a.proxy.blackhole();
    const cutAt = Date.now();
    await waitFor(() => b.leadership.isLeader, { timeoutMs: 10_000, what: "b leads" });
    const bAfter = Date.now() - cutAt;
    // a stopped leading before b started (it paused first), and b's epoch is later.
    expect(a.events).toEqual([expect.stringMatching(/^elected /), "lost"]);
    expect(b.leadership.epoch).toBeGreaterThan(BigInt((a.events[0] as string).split(" ")[1] as string));
    expect(bAfter).toBeLessThan(2000 + 2000);
    await a.proxy.heal();
    // a finds its lease gone and campaigns again, behind b: it does not lead.
    await waitFor(async () => (await a.leadership.leader()) === "b" && !a.leadership.isLeader, { what: "a behind b" });
    expect(b.leadership.isLeader).toBe(true);
  });
});
