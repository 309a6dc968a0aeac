import { afterAll, describe, expect, inject, it } from "vitest";
import { TaskStatus, type Task } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, waitTerminal, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

const LEASE_MS = 3000;
const ELECTION_TTL_S = 2;
const ETCD_LEASE_S = 5;

async function snapshot(c: GatewayClients, ids: string[]): Promise<Task[]> {
  const out: Task[] = [];
  for (let i = 0; i < ids.length; i += 100) {
    out.push(...(await Promise.all(ids.slice(i, i + 100).map((id) => c.tasks.getTask({ taskId: id })))));
  }
  return out;
}

const TERMINAL = new Set([TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED]);

describe("chaos: kill -9 of a worker, then of the leader scheduler", () => {
  let mesh: Mesh | undefined;
  afterAll(async () => {
    await mesh?.close();
  });

  it("loses no task, duplicates only tasks in flight at the kills, and recovers within the lease TTL + 2 s", async () => {
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: inject("redisUrl"),
      prefix: uniquePrefix("chaos"),
      workers: 2,
      schedulers: 2,
      slots: 5,
      schedulerArgs: ["--task-lease-ms", String(LEASE_MS), "--election-ttl", String(ELECTION_TTL_S)],
    });
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const ids: string[] = [];
    for (let i = 0; i < 2000; i += 500) {
      const r = await c.tasks.submitTasks({
        tasks: Array.from({ length: 500 }, (_, j) => ({ type: "sleep", payload: { ms: 20 }, affinityKey: `k${i + j}` })),
      });
      ids.push(...r.tasks.map((t) => t.id));
    }
    const depth = async () => {
      const s = await c.cluster.getClusterStatus({});
      const q = s.queues.find((x) => x.name === "default");
      const waiting = Number((q?.queued ?? 0n) + (q?.delayed ?? 0n) + (q?.retryWait ?? 0n));
      const running = Number(q?.running ?? 0n);
      return { done: ids.length - waiting - running, running };
    };
    const runningTasks = async (): Promise<Task[]> => {
      const out: Task[] = [];
      let pageToken = "";
      do {
        const page = await c.tasks.listTasks({ status: TaskStatus.RUNNING, pageSize: 1000, pageToken });
        out.push(...page.tasks);
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      return out;
    };

    // 1. Kill a worker after ~500 completions.
    await waitFor(async () => (await depth()).done >= 500, { timeoutMs: 60_000, intervalMs: 10 });
    const victim = mesh.workers[0];
    if (victim === undefined) throw new Error("no worker");
    const running1 = await runningTasks();
    const onVictim = running1.filter((t) => t.workerId === victim.name).map((t) => t.id);
    let inflight = running1.length;
    let t0 = Date.now();
    await victim.kill();
    await waitFor(
      async () => {
        const now = await snapshot(c, onVictim);
        return now.every((t) => !(t.status === TaskStatus.RUNNING && t.workerId === victim.name));
      },
      { timeoutMs: 30_000, intervalMs: 10 },
    );
    const workerRecovery = Date.now() - t0;
    expect(onVictim.length).toBeGreaterThan(0);
    expect(workerRecovery).toBeLessThan(ETCD_LEASE_S * 1000 + 2000);

    // 2. Kill the leader after ~1000 completions.
    await waitFor(async () => (await depth()).done >= 1000, { timeoutMs: 60_000, intervalMs: 10 });
    const status = await waitFor(async () => {
      const s = await c.cluster.getClusterStatus({});
      return s.schedulers.some((x) => x.leader) ? s : undefined;
    });
    const leaderAddress = status.schedulers.find((x) => x.leader)?.address;
    const leader = mesh.schedulers.find((s) => s.address === leaderAddress);
    if (leader === undefined) throw new Error(`leader ${leaderAddress} not found`);
    const atKill = await depth();
    inflight += atKill.running;
    t0 = Date.now();
    await leader.kill();
    // Recovery: completions resume under the new leader.
    await waitFor(async () => (await depth()).done >= Math.min(ids.length, atKill.done + atKill.running + 20), {
      timeoutMs: 30_000,
      intervalMs: 10,
    });
    const leaderRecovery = Date.now() - t0;
    expect(leaderRecovery).toBeLessThan(ELECTION_TTL_S * 1000 + 2000);

    const all = await waitTerminal(c.tasks, ids, 120_000);
    const failed = all.filter((t) => t.status !== TaskStatus.SUCCEEDED);
    expect(failed.map((t) => [t.id, t.status, t.error?.code])).toEqual([]);
    const duplicates = all.filter((t) => t.attempt > 1).length;
    expect(duplicates).toBeLessThanOrEqual(inflight);
    process.stdout.write(
      `chaos: worker recovery ${workerRecovery} ms, leader recovery ${leaderRecovery} ms, ` +
        `re-run ${duplicates} of ${inflight} in flight at the kills\n`,
    );
  });
});
