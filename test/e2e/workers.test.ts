import { join } from "node:path";
import { Etcd3 } from "etcd3";
import { afterEach, describe, expect, inject, it } from "vitest";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

const fixtures = join(import.meta.dirname, "../fixtures/handlers/example.ts");

function ms(t: { seconds: bigint; nanos: number } | undefined): number {
  return t === undefined ? NaN : Number(t.seconds) * 1000 + t.nanos / 1e6;
}

describe("workers joining, leaving and dying", () => {
  let mesh: Mesh | undefined;
  let etcd: Etcd3 | undefined;
  afterEach(async () => {
    await mesh?.close();
    etcd?.close();
    mesh = undefined;
    etcd = undefined;
  });

  it("gives a worker started after the scheduler tasks within 1 s of registering", async () => {
    const prefix = uniquePrefix("join");
    mesh = await startMesh({ etcdEndpoint: inject("etcdEndpoint"), redisUrl: inject("redisUrl"), prefix, workers: 1, slots: 1 });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    // Keep the only worker busy, then queue work that only a new worker can take.
    const blocker = await c.tasks.submitTask({ type: "sleep", payload: { ms: 8000 } });
    await waitFor(async () => (await c.tasks.getTask({ taskId: blocker.id })).status === TaskStatus.RUNNING);
    const queued = await c.tasks.submitTasks({ tasks: Array.from({ length: 5 }, () => ({ type: "noop" })) });

    etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    const newId = `${prefix}-late`;
    let registeredAt = 0;
    const watcher = await etcd.watch().key(`${mesh.etcdRoot}workers/${newId}`).create();
    watcher.on("put", () => {
      if (registeredAt === 0) registeredAt = Date.now();
    });
    await mesh.addWorker(newId);
    const done = await waitTerminal(c.tasks, queued.tasks.map((t) => t.id), 10_000);
    await watcher.cancel();
    expect(registeredAt).toBeGreaterThan(0);
    for (const t of done) {
      expect(t.status).toBe(TaskStatus.SUCCEEDED);
      expect(t.workerId).toBe(newId);
    }
    const firstStart = Math.min(...done.map((t) => ms(t.startedAt)));
    expect(firstStart - registeredAt).toBeLessThan(1000);
  });

  it("re-queues the running tasks of a worker killed with SIGKILL, which leaves the ring within its lease TTL + 1 s", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("kill"),
      workers: 2,
      slots: 4,
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const victim = mesh.workers[1];
    if (victim === undefined) throw new Error("no second worker");
    const submitted = await c.tasks.submitTasks({
      tasks: Array.from({ length: 8 }, (_, i) => ({ type: "sleep", payload: { ms: 1500 }, affinityKey: `k${i}` })),
    });
    const ids = submitted.tasks.map((t) => t.id);
    const onVictim = await waitFor(async () => {
      const ts = await Promise.all(ids.map((id) => c.tasks.getTask({ taskId: id })));
      const running = ts.filter((t) => t.status === TaskStatus.RUNNING && t.workerId === victim.name);
      return running.length > 0 ? running : undefined;
    });
    const killedAt = Date.now();
    await victim.kill();
    await waitFor(
      async () => {
        const w = await c.cluster.listWorkers({});
        return !w.workers.some((x) => x.id === victim.name);
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    const left = Date.now() - killedAt;
    expect(left).toBeLessThan(5000 + 1000);

    const done = await waitTerminal(c.tasks, ids, 30_000);
    for (const t of done) expect(t.status).toBe(TaskStatus.SUCCEEDED);
    for (const r of onVictim) {
      const t = done.find((x) => x.id === r.id);
      expect(t?.attempt).toBe(2);
      expect(t?.workerId).not.toBe(victim.name);
    }
  });

  it("finishes in-flight tasks on SIGTERM, takes no new ones while draining, then exits cleanly", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("term"),
      workers: 2,
      slots: 4,
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const leaving = mesh.workers[0];
    if (leaving === undefined) throw new Error("no worker");
    const first = await c.tasks.submitTasks({
      tasks: Array.from({ length: 8 }, (_, i) => ({ type: "sleep", payload: { ms: 1500 }, affinityKey: `a${i}` })),
    });
    const running = await waitFor(async () => {
      const ts = await Promise.all(first.tasks.map((t) => c.tasks.getTask({ taskId: t.id })));
      const mine = ts.filter((t) => t.status === TaskStatus.RUNNING && t.workerId === leaving.name);
      return mine.length > 0 ? mine : undefined;
    });
    etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    const client = etcd;
    const exit = leaving.stop();
    // Wait until the worker announced it is draining, then submit more: none may go to it.
    await waitFor(async () => {
      const v = await client.get(`${mesh?.etcdRoot}workers/${leaving.name}`).string();
      return v === null || (JSON.parse(v) as { draining: boolean }).draining;
    });
    const second = await c.tasks.submitTasks({
      tasks: Array.from({ length: 8 }, (_, i) => ({ type: "noop", affinityKey: `b${i}` })),
    });
    expect(await exit).toBe(0);
    const done = await waitTerminal(c.tasks, [...first.tasks, ...second.tasks].map((t) => t.id), 30_000);
    for (const t of done) expect(t.status).toBe(TaskStatus.SUCCEEDED);
    for (const r of running) {
      const t = done.find((x) => x.id === r.id);
      expect(t?.attempt).toBe(1);
      expect(t?.workerId).toBe(leaving.name);
    }
    for (const t of done.slice(8)) expect(t.workerId).not.toBe(leaving.name);
  });

  it("runs user-defined handlers loaded with --handlers, and cancels a running one", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("user"),
      workers: 1,
      workerArgs: ["--handlers", fixtures],
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const greet = await c.tasks.submitTask({ type: "greet", payload: { name: "Ada" } });
    const slow = await c.tasks.submitTask({ type: "slow_echo", payload: { value: 1, steps: 100, step_ms: 100 } });
    await waitFor(async () => (await c.tasks.getTask({ taskId: slow.id })).status === TaskStatus.RUNNING);
    const cancelled = await c.tasks.cancelTask({ taskId: slow.id, reason: "changed my mind" });
    expect([TaskStatus.RUNNING, TaskStatus.CANCELLED]).toContain(cancelled.status);
    const [g, s] = await waitTerminal(c.tasks, [greet.id, slow.id], 10_000);
    expect(g?.status).toBe(TaskStatus.SUCCEEDED);
    expect(g?.result).toEqual({ greeting: "Hello, Ada!" });
    expect(s?.status).toBe(TaskStatus.CANCELLED);
    expect(s?.attempt).toBe(1);
  });
});
