import { Code, ConnectError } from "@connectrpc/connect";
import { afterEach, describe, expect, inject, it } from "vitest";
import { TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { redisCommand, startSentinelGroup, type SentinelGroup } from "../support/backends.js";
import { gatewayClients, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

const LEASE_MS = 3000;
const BATCH = 5;
/** Each submitter sends a batch, waits for the answer, then this long: ≈ 250 tasks/s in all. */
const PACE_MS = 20;
const SUBMITTERS = 2;
/** How long an acknowledged task may take to reach SUCCEEDED before it counts as lost. */
const SETTLE_MS = 60_000;

/** One SubmitTasks call through the gateway. */
interface Call {
  start: number;
  end: number;
  ids: string[];
  code?: Code;
  message?: string;
}

/** What one fault did to the submits, and when. */
interface Fault {
  kind: "kill -9" | "SENTINEL FAILOVER";
  at: number;
  /** The Sentinels named the new master and it answered as one. */
  promotedAt: number;
  /** The group had a replica in sync again. */
  healthyAt: number;
}

/**
 * Submits batches of short tasks through the gateway from `SUBMITTERS` loops until stopped,
 * recording every call.
 */
function submitLoad(c: GatewayClients): { calls: Call[]; stop: () => Promise<void> } {
  const calls: Call[] = [];
  let stopped = false;
  const hardStop = Date.now() + 150_000;
  const loop = async (): Promise<void> => {
    for (let k = 0; !stopped && Date.now() < hardStop; k++) {
      const start = Date.now();
      try {
        const r = await c.tasks.submitTasks(
          { tasks: Array.from({ length: BATCH }, () => ({ type: "sleep", payload: { ms: 20 } })) },
          { timeoutMs: 8000 },
        );
        calls.push({ start, end: Date.now(), ids: r.tasks.map((t) => t.id) });
      } catch (err) {
        const e = ConnectError.from(err);
        calls.push({ start, end: Date.now(), ids: [], code: e.code, message: e.rawMessage });
      }
      await new Promise((r) => setTimeout(r, PACE_MS));
    }
  };
  const loops = Array.from({ length: SUBMITTERS }, () => loop());
  return {
    calls,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

/** Final status of each id (undefined: NOT_FOUND), polling until none is pending or the deadline. */
async function settle(c: GatewayClients, ids: string[]): Promise<Map<string, TaskStatus | undefined>> {
  const final = new Map<string, TaskStatus | undefined>();
  let pending = ids;
  const deadline = Date.now() + SETTLE_MS;
  for (let round = 0; pending.length > 0 && round < 10_000; round++) {
    const next: string[] = [];
    for (let i = 0; i < pending.length; i += 64) {
      const part = pending.slice(i, i + 64);
      const got = await Promise.all(
        part.map((id) =>
          c.tasks.getTask({ taskId: id }, { timeoutMs: 5000 }).then(
            (t) => t.status,
            (err: unknown) => (ConnectError.from(err).code === Code.NotFound ? undefined : ("retry" as const)),
          ),
        ),
      );
      part.forEach((id, j) => {
        const s = got[j];
        if (s === TaskStatus.SUCCEEDED || s === TaskStatus.FAILED || s === TaskStatus.CANCELLED || s === undefined) {
          final.set(id, s);
        } else {
          next.push(id);
        }
      });
    }
    pending = next;
    if (pending.length === 0 || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  for (const id of pending) final.set(id, TaskStatus.RUNNING);
  return final;
}

/**
 * kill -9 of the master; waits for the promotion, then restarts the killed node (as a process
 * supervisor would) as a replica of the new master.
 */
async function killMaster(group: SentinelGroup): Promise<Fault> {
  const old = await waitFor(() => group.masterPort(), { what: "the master's port" });
  const at = Date.now();
  await group.kill(old);
  const master = await group.waitHealthy({ notPort: old, replicas: 0, timeoutMs: 30_000 });
  const promotedAt = Date.now();
  await group.restart(old, master);
  await group.waitHealthy({ replicas: 1, timeoutMs: 30_000 });
  return { kind: "kill -9", at, promotedAt, healthyAt: Date.now() };
}

/** A graceful `SENTINEL FAILOVER`: Sentinel turns the old master into a replica itself. */
async function sentinelFailover(group: SentinelGroup): Promise<Fault> {
  const old = await waitFor(() => group.masterPort(), { what: "the master's port" });
  const sentinel = group.sentinels[0];
  if (sentinel === undefined) throw new Error("no Sentinel");
  const at = Date.now();
  expect(await redisCommand(sentinel.port, "SENTINEL", "FAILOVER", group.masterName)).toBe("OK");
  await group.waitHealthy({ notPort: old, replicas: 0, timeoutMs: 30_000 });
  const promotedAt = Date.now();
  await group.waitHealthy({ replicas: 1, timeoutMs: 30_000 });
  return { kind: "SENTINEL FAILOVER", at, promotedAt, healthyAt: Date.now() };
}

interface FaultReport {
  fault: Fault;
  /** Tasks acknowledged from the previous fault (or the start) up to the next one (or the end). */
  acked: number;
  /** Acknowledged tasks that never reached SUCCEEDED, with when they were acknowledged. */
  lost: { id: string; at: number; status: TaskStatus | undefined }[];
  /**
   * From the fault to the end of the first successful call sent after the last failed one (after
   * the fault itself when none failed): how long until submits were reliably back.
   */
  outageMs: number;
  /** From the start of the first failed call to the end of the last one (0 when none failed). */
  failingMs: number;
  failedCalls: number;
  codes: string;
  slowestCallMs: number;
}

/** Attributes calls and lost tasks to the fault that preceded them. */
function faultReports(calls: Call[], faults: Fault[], final: Map<string, TaskStatus | undefined>): FaultReport[] {
  return faults.map((fault, i) => {
    const from = i === 0 ? 0 : fault.at;
    const until = faults[i + 1]?.at ?? Infinity;
    const mine = calls.filter((c) => c.end >= from && c.end < until);
    const after = mine.filter((c) => c.end >= fault.at);
    const failed = after.filter((c) => c.code !== undefined);
    const lastFailure = Math.max(fault.at, ...failed.map((c) => c.end));
    const firstOk = Math.min(...after.filter((c) => c.code === undefined && c.start >= lastFailure).map((c) => c.end));
    const lost = mine.flatMap((c) =>
      c.ids.filter((id) => final.get(id) !== TaskStatus.SUCCEEDED).map((id) => ({ id, at: c.end, status: final.get(id) })),
    );
    return {
      fault,
      acked: mine.reduce((n, c) => n + c.ids.length, 0),
      lost,
      outageMs: firstOk - fault.at,
      failingMs: failed.length === 0 ? 0 : lastFailure - Math.min(...failed.map((c) => c.start)),
      failedCalls: failed.length,
      codes: [...new Set(failed.map((c) => Code[c.code as Code]))].join(","),
      slowestCallMs: Math.max(0, ...after.filter((c) => c.start <= fault.healthyAt).map((c) => c.end - c.start)),
    };
  });
}

describe("Redis Sentinel failover under load", () => {
  let group: SentinelGroup | undefined;
  let mesh: Mesh | undefined;
  afterEach(async () => {
    await mesh?.close();
    mesh = undefined;
    await group?.stop();
    group = undefined;
  });

  /**
   * A mesh on a Sentinel group (1 master, 1 replica, 3 Sentinels) under a steady submit load:
   * a kill -9 of the master, then a SENTINEL FAILOVER, each once the flow is steady again; then
   * what became of every acknowledged task.
   */
  async function run(label: string, schedulerArgs: string[]): Promise<FaultReport[]> {
    const t0 = Date.now();
    group = await startSentinelGroup({ replicas: 1, sentinels: 3 });
    mesh = await startMesh({
      etcdEndpoint: inject("etcdEndpoint"),
      redisUrl: group.url,
      prefix: uniquePrefix("redisfo"),
      workers: 2,
      slots: 20,
      schedulerArgs: ["--task-lease-ms", String(LEASE_MS), ...schedulerArgs],
    });
    const started = Date.now();
    const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
    const load = submitLoad(c);
    const acknowledgedSince = (t: number): number => load.calls.filter((x) => x.start >= t).reduce((n, x) => n + x.ids.length, 0);
    const faults: Fault[] = [];
    try {
      await waitFor(() => acknowledgedSince(0) >= 300, { timeoutMs: 30_000, what: "300 tasks acknowledged" });
      for (const cause of [killMaster, sentinelFailover]) {
        const f = await cause(group);
        faults.push(f);
        await waitFor(() => acknowledgedSince(f.healthyAt) >= 200, {
          timeoutMs: 30_000,
          what: `200 tasks acknowledged after the ${f.kind}`,
        });
      }
    } catch (err) {
      // What the submits and the scheduler said, to tell why the flow did not come back.
      const failed = load.calls.filter((x) => x.code !== undefined).slice(-200);
      const messages = [...new Set(failed.map((x) => `${Code[x.code as Code]}: ${x.message ?? ""}`))];
      const last = load.calls.slice(-3).map((x) => `${x.start - t0}+${x.end - x.start}ms ${x.code === undefined ? "ok" : Code[x.code]}`);
      const logs = mesh.schedulers
        .map((p) => p.output().split("\n").filter((l) => /"level":(40|50|60)/.test(l)).slice(-15).join("\n"))
        .join("\n");
      process.stdout.write(
        `redis failover run (${label}) failed after faults ${JSON.stringify(faults.map((f) => ({ ...f, at: f.at - t0, promotedAt: f.promotedAt - t0, healthyAt: f.healthyAt - t0 })))}\n` +
          `last calls: ${last.join("; ")}\nfailures: ${messages.join(" | ")}\nscheduler warnings:\n${logs}\n`,
      );
      throw err;
    } finally {
      await load.stop();
    }
    const flowed = Date.now();
    const final = await settle(
      c,
      load.calls.flatMap((x) => x.ids),
    );
    const reports = faultReports(load.calls, faults, final);
    for (const r of reports) {
      process.stdout.write(
        `redis ${r.fault.kind} (${label}): ${r.acked} tasks acknowledged, ${r.lost.length} lost; ` +
          `replica promoted ${r.fault.promotedAt - r.fault.at} ms after the fault, a replica in sync again after ` +
          `${r.fault.healthyAt - r.fault.at} ms; submits reliably back ${r.outageMs} ms after the fault; ` +
          `${r.failedCalls} failed calls${r.codes === "" ? "" : ` (${r.codes})`} over ${r.failingMs} ms, slowest call ${r.slowestCallMs} ms` +
          (r.lost.length === 0
            ? ""
            : `; the lost ones were acknowledged ${Math.min(...r.lost.map((l) => l.at)) - r.fault.at} to ` +
              `${Math.max(...r.lost.map((l) => l.at)) - r.fault.at} ms after the fault`) +
          "\n",
      );
    }
    process.stdout.write(
      `redis failover run (${label}): setup ${started - t0} ms, flow ${flowed - started} ms, settle ${Date.now() - flowed} ms\n`,
    );
    expect(mesh.schedulers.every((s) => s.child.exitCode === null && s.child.signalCode === null)).toBe(true);
    for (const r of reports) expect(r.outageMs).toBeLessThan(30_000);
    return reports;
  }

  it("goes on after each failover; without WAIT, loses at most what the old master acknowledged before clients left it", async () => {
    const [kill, graceful] = (await run("no WAIT", [])) as [FaultReport, FaultReport];
    // kill -9: asynchronous replication on loopback trails by far less than a second, and nothing
    // acknowledged after the kill came from the dead master.
    expect(kill.lost.filter((l) => l.at < kill.fault.at - 1000 || l.at > kill.fault.at)).toEqual([]);
    // SENTINEL FAILOVER: the old master takes writes until Sentinel turns it into a replica.
    expect(graceful.lost.filter((l) => l.at < graceful.fault.at - 1000 || l.at > graceful.fault.healthyAt)).toEqual([]);
    // A lost task is gone from Redis (NOT_FOUND); it never lingers in another state.
    expect([...kill.lost, ...graceful.lost].filter((l) => l.status !== undefined)).toEqual([]);
  }, 300_000);

  it("loses no acknowledged task with --redis-wait-replicas 1", async () => {
    const reports = await run("--redis-wait-replicas 1", ["--redis-wait-replicas", "1", "--redis-wait-timeout-ms", "500"]);
    for (const r of reports) expect(r.lost).toEqual([]);
  }, 300_000);
});
