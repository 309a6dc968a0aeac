import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { rm } from "node:fs/promises";
import { afterEach, describe, expect, inject, it } from "vitest";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { startRedis, type Backend } from "../support/backends.js";
import { gatewayClients, waitTerminal } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

describe("resilience", () => {
  let mesh: Mesh | undefined;
  let redis: Backend | undefined;
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    await mesh?.close();
    await redis?.stop();
    for (const f of cleanup.splice(0)) await f();
    mesh = undefined;
    redis = undefined;
  });

  it("drops a worker whose stream goes silent (SIGSTOP), re-runs its attempts elsewhere, and rejects its late results", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("stop"),
      workers: 2,
      slots: 4,
      schedulerArgs: ["--task-lease-ms", "3000"],
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const frozen = mesh.workers[0];
    if (frozen === undefined) throw new Error("no worker");
    const submitted = await c.tasks.submitTasks({
      tasks: Array.from({ length: 8 }, (_, i) => ({ type: "sleep", payload: { ms: 2000 }, affinityKey: `s${i}` })),
    });
    const ids = submitted.tasks.map((t) => t.id);
    const onFrozen = await waitFor(async () => {
      const ts = await Promise.all(ids.map((id) => c.tasks.getTask({ taskId: id })));
      const mine = ts.filter((t) => t.status === TaskStatus.RUNNING && t.workerId === frozen.name);
      return mine.length > 0 ? mine.map((t) => t.id) : undefined;
    });
    const t0 = Date.now();
    frozen.child.kill("SIGSTOP");
    try {
      // The silent stream is dropped and its attempts re-queued: they run again on the other worker.
      await waitFor(
        async () => {
          const ts = await Promise.all(onFrozen.map((id) => c.tasks.getTask({ taskId: id })));
          return ts.every((t) => t.attempt === 2 && t.workerId !== frozen.name);
        },
        { timeoutMs: 15_000, intervalMs: 50 },
      );
      const detected = Date.now() - t0;
      expect(detected).toBeLessThan(3000 + 2000);
    } finally {
      frozen.child.kill("SIGCONT");
    }
    const done = await waitTerminal(c.tasks, ids, 30_000);
    // The thawed worker finishes its stale attempts and reports them; wait until it serves again.
    await waitFor(
      async () => {
        const more = await c.tasks.submitTasks({
          tasks: Array.from({ length: 8 }, (_, i) => ({ type: "noop", affinityKey: `n${Date.now()}-${i}` })),
        });
        const ts = await waitTerminal(c.tasks, more.tasks.map((t) => t.id), 10_000);
        return ts.some((t) => t.workerId === frozen.name);
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    const after = await Promise.all(ids.map((id) => c.tasks.getTask({ taskId: id })));
    for (const [i, t] of after.entries()) {
      expect(t.status).toBe(TaskStatus.SUCCEEDED);
      expect(t.attempt).toBe(done[i]?.attempt);
      expect(t.workerId).toBe(done[i]?.workerId);
      if (onFrozen.includes(t.id)) expect(t.workerId).not.toBe(frozen.name);
    }
  });

  it("serves reads and writes on every scheduler replica; the leader dispatches and cancels for all", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("ha"),
      workers: 1,
      schedulers: 2,
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const status = await waitFor(async () => {
      const s = await c.cluster.getClusterStatus({});
      return s.schedulers.length === 2 && s.schedulers.some((x) => x.leader) ? s : undefined;
    });
    const follower = status.schedulers.find((x) => !x.leader);
    if (follower === undefined) throw new Error("no follower");
    const direct = createClient(SchedulerService, createGrpcTransport({ baseUrl: `http://${follower.address}` }));
    const t = await direct.submitTask({ type: "data_processing", payload: { data: [{ a: 2 }] } });
    const [done] = await waitTerminal(c.tasks, [t.id]);
    expect(done?.status).toBe(TaskStatus.SUCCEEDED);
    expect(done?.result).toEqual({ processed_data: [{ a: 4 }], items_processed: 1 });
    const events = [];
    for await (const ev of direct.watchTask({ taskId: t.id })) events.push(ev);
    expect(events.at(-1)?.task?.status).toBe(TaskStatus.SUCCEEDED);

    const long = await direct.submitTask({ type: "sleep", payload: { ms: 30_000 } });
    await waitFor(async () => (await direct.getTask({ taskId: long.id })).status === TaskStatus.RUNNING);
    await direct.cancelTask({ taskId: long.id, reason: "from the follower" });
    const [cancelled] = await waitTerminal(c.tasks, [long.id], 5000);
    expect(cancelled?.status).toBe(TaskStatus.CANCELLED);
  });

  it("loses no accepted task when Redis (appendonly, fsync always) restarts mid-run", async () => {
    redis = await startRedis({ appendOnly: true });
    const port = redis.port;
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: redis.address,
      prefix: uniquePrefix("redis"),
      workers: 2,
      slots: 5,
      schedulerArgs: ["--task-lease-ms", "3000"],
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const accepted: string[] = [];
    let refused = 0;
    let restarted = false;
    const submitting = (async () => {
      for (let i = 0; i < 60; i++) {
        try {
          const r = await c.tasks.submitTasks({
            tasks: Array.from({ length: 10 }, () => ({ type: "sleep", payload: { ms: 20 } })),
          });
          accepted.push(...r.tasks.map((t) => t.id));
        } catch {
          refused++;
        }
        if (restarted && accepted.length >= 400) break;
      }
    })();
    await waitFor(() => accepted.length >= 150, { timeoutMs: 30_000 });
    // Restart Redis on the same port and data dir; it reloads its append-only file.
    const dir = (redis.process.spawnargs[redis.process.spawnargs.indexOf("--dir") + 1]) as string;
    const first = redis.process;
    first.kill("SIGKILL");
    await waitFor(() => first.exitCode !== null || first.signalCode !== null);
    redis = await startRedis({ appendOnly: true, port, dir });
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    restarted = true;
    await submitting;
    expect(accepted.length).toBeGreaterThan(150);
    const done = await waitTerminal(c.tasks, accepted, 90_000);
    const lost = done.filter((t) => t.status !== TaskStatus.SUCCEEDED);
    expect(lost.map((t) => [t.id, t.status, t.error?.code])).toEqual([]);
    process.stdout.write(`redis restart: ${accepted.length} accepted, ${refused} batches refused while down, none lost\n`);
  });
});
