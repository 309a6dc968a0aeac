import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, inject, it } from "vitest";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, startService, type Mesh, type ServiceProcess } from "../support/mesh.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { waitFor } from "../support/wait.js";

/** When a service logged `msg` (ms since the epoch), each time it did. */
function logged(p: ServiceProcess, msg: string): number[] {
  const out: number[] = [];
  for (const line of p.output().split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const l = JSON.parse(line) as { msg?: string; time?: string };
      if (l.msg === msg && typeof l.time === "string") out.push(Date.parse(l.time));
    } catch {
      // Not a log line.
    }
  }
  return out;
}

describe("scheduler leader failover", () => {
  let mesh: Mesh | undefined;
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
    await mesh?.close();
    mesh = undefined;
  });

  /** Starts a scheduler replica of `mesh` whose etcd traffic goes through its own cuttable proxy. */
  async function scheduler(m: Mesh, name: string, args: string[]): Promise<{ proc: ServiceProcess; proxy: TcpProxy }> {
    const proxy = await startTcpProxy(inject("etcdEndpoint"));
    cleanup.push(() => proxy.close());
    const cache = await mkdtemp(join(tmpdir(), "taskmesh-cache-"));
    cleanup.push(() => rm(cache, { recursive: true, force: true }));
    const proc = await startService("scheduler", name, [
      "--etcd", proxy.address,
      "--etcd-root", m.etcdRoot,
      "--redis", inject("redisUrl"),
      "--redis-prefix", m.redisPrefix,
      "--config-cache", join(cache, "c.json"),
      ...args,
    ]);
    cleanup.push(() => proc.stop());
    return { proc, proxy };
  }

  it("a leader cut off from etcd steps down before another is elected, and no running attempt runs twice", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("cut"),
      schedulers: 0,
      workers: 2,
      slots: 5,
    });
    const args = ["--task-lease-ms", "3000", "--election-ttl", "2"];
    const a = await scheduler(mesh, "scheduler-a", args);
    const b = await scheduler(mesh, "scheduler-b", args);
    const [leader, follower] = await waitFor(() => {
      if (logged(a.proc, "queues fenced for the new leadership").length > 0) return [a, b] as const;
      if (logged(b.proc, "queues fenced for the new leadership").length > 0) return [b, a] as const;
      return undefined;
    }, { what: "a leader", timeoutMs: 15_000 });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    await waitFor(async () => (await c.cluster.getClusterStatus({})).workers.length === 2, { what: "two workers" });
    const { tasks } = await c.tasks.submitTasks({
      tasks: Array.from({ length: 10 }, (_, i) => ({ type: "sleep", payload: { ms: 6000 }, affinityKey: `k${i}` })),
    });
    const ids = tasks.map((t) => t.id);
    await waitFor(async () => {
      const ts = await Promise.all(ids.map((id) => c.tasks.getTask({ taskId: id })));
      return ts.every((t) => t.status === TaskStatus.RUNNING);
    }, { what: "all ten running" });

    const cutAt = Date.now();
    leader.proxy.blackhole();
    try {
      const electedAt = await waitFor(() => logged(follower.proc, "elected leader")[0], { what: "the follower elected", timeoutMs: 15_000 });
      const steppedDownAt = logged(leader.proc, "stepped down")[0];
      // The cut-off leader stopped by itself, before etcd could let its lease expire.
      expect(steppedDownAt).toBeDefined();
      expect(steppedDownAt as number).toBeLessThan(electedAt);
      expect(electedAt - cutAt).toBeLessThan(2000 + 2000);
      process.stdout.write(`etcd cut: old leader stepped down after ${(steppedDownAt as number) - cutAt} ms, new leader after ${electedAt - cutAt} ms\n`);
    } finally {
      await leader.proxy.heal();
    }
    const done = await waitTerminal(c.tasks, ids, 30_000);
    // The workers were never lost: every task ran once, to its end, on its first attempt.
    expect(done.map((t) => [t.status, t.attempt])).toEqual(ids.map(() => [TaskStatus.SUCCEEDED, 1]));
    expect(logged(leader.proc, "re-queued attempts of worker")).toEqual([]);
    // The old leader is a healthy follower again: both replicas registered.
    await waitFor(async () => (await c.cluster.getClusterStatus({})).schedulers.length === 2, { what: "both replicas registered", timeoutMs: 15_000 });
    expect(leader.proc.child.exitCode).toBeNull();
  });

  it("a new leader gives workers a lease's time to find it before it expires what they run", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("resend"),
      schedulers: 2,
      workers: 2,
      slots: 5,
      // Leases far shorter than the time without a leader.
      schedulerArgs: ["--task-lease-ms", "1500", "--election-ttl", "2"],
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    await waitFor(async () => (await c.cluster.getClusterStatus({})).workers.length === 2, { what: "two workers" });
    const { tasks } = await c.tasks.submitTasks({
      tasks: Array.from({ length: 10 }, (_, i) => ({ type: "sleep", payload: { ms: 4000 }, affinityKey: `k${i}` })),
    });
    const ids = tasks.map((t) => t.id);
    await waitFor(async () => {
      const ts = await Promise.all(ids.map((id) => c.tasks.getTask({ taskId: id })));
      return ts.every((t) => t.status === TaskStatus.RUNNING);
    }, { what: "all ten running" });
    const status = await c.cluster.getClusterStatus({});
    const leader = mesh.schedulers.find((s) => s.address === status.schedulers.find((x) => x.leader)?.address);
    const next = mesh.schedulers.find((s) => s !== leader);
    const slow = mesh.workers[0];
    if (leader === undefined || next === undefined || slow === undefined) throw new Error("no leader found");
    // One worker is slow to find the new leader: frozen across the whole election.
    slow.child.kill("SIGSTOP");
    try {
      await leader.kill();
      const tookOver = await waitFor(() => logged(next, "queues fenced for the new leadership")[0], { what: "the new leader", timeoutMs: 15_000 });
      // ... and still for half a second after the new leader took over (a slow link, a busy host).
      await waitFor(() => Date.now() > tookOver + 500, { what: "the worker's delay" });
    } finally {
      slow.child.kill("SIGCONT");
    }
    const done = await waitTerminal(c.tasks, ids, 30_000);
    // Its attempts' leases had run out while no leader was there; the new leader restarted them,
    // the worker said hello in time, and nothing ran twice.
    expect(done.map((t) => [t.status, t.attempt])).toEqual(ids.map(() => [TaskStatus.SUCCEEDED, 1]));
  });
});
