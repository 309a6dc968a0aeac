/**
 * Faults on five hosts (network namespaces): a nemesis applies one fault at a time while a load
 * generator submits `record` tasks through both gateways; after each fault heals and the cluster
 * settles, the checker judges the workers' own execution records for that fault's window; at the
 * end, for the whole run. See test/support/multihost.ts for the topology, nemesis.ts for the
 * faults and checker.ts for the definitions. Runs as its own vitest project (`multihost`), after
 * the others, because it needs root and most of the machine.
 */
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";
import { BASELINE, check, formatReport, type CheckReport, type FaultWindow, type FinalTask } from "../support/checker.js";
import { Multihost, sentinelRedis, singleRedis, TIMINGS, type TaskView } from "../support/multihost.js";
import { Nemesis, type AppliedFault } from "../support/nemesis.js";
import { missingPrerequisite } from "../support/netns.js";
import { waitFor } from "../support/wait.js";

/** How long each fault lasts: longer than every TTL, so every failure detector has to act. */
const HOLD_MS = 6000;
/** Faults that cut off a worker: its attempts must move on within the task lease + 2 s. */
const WORKER_BOUND_MS = TIMINGS.taskLeaseMs + 2000;
/** Other faults: dispatch must resume within the election TTL + 2 s. */
const ELECTION_BOUND_MS = TIMINGS.electionTtlS * 1000 + 2000;
/** A gateway must serve again within this long after a heal. */
const GATEWAY_SERVE_BOUND_MS = 5000;
/** How long the gateways are probed after a heal (longer than the bound, to report how late). */
const GATEWAY_PROBE_MS = 15_000;
/** How long the cluster may take to settle after a heal (and before a fault). */
const SETTLE_TIMEOUT_MS = 20_000;
/** Before a fault, once the cluster failed to settle before an earlier one: fail fast. */
const SETTLE_BROKEN_TIMEOUT_MS = 5000;
/** How long the tasks acknowledged up to a window's end may take to finish. */
const QUIESCE_TIMEOUT_MS = 15_000;
const LOAD = { ratePerSecond: 25, minMs: 200, maxMs: 500 };
/**
 * `sentinel` (default): master + replica + 3 Sentinels behind `redis-sentinel://…`, which runs the
 * Redis failover case too. `single` (TASKMESH_MULTIHOST_REDIS=single): one Redis, no failover.
 */
const REDIS_MODE = process.env["TASKMESH_MULTIHOST_REDIS"] === "single" ? "single" : "sentinel";
/** The etcd member made leader before every fault, so that runs are alike. */
const ETCD_LEADER = "etcd-3";
/** TASKMESH_MULTIHOST_KEEP=1 keeps the run directory (logs, records, acks) even when the run passes. */
const KEEP_RUN_DIR = process.env["TASKMESH_MULTIHOST_KEEP"] === "1";

const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

interface FaultCase {
  /** The window's name in the report. */
  name: string;
  /** The test's title. */
  title: string;
  apply: (n: Nemesis, mh: Multihost) => Promise<AppliedFault | undefined>;
  /** Why it was skipped, when apply returns undefined. */
  skipReason?: string;
}

const FAULTS: FaultCase[] = [
  {
    name: "kill-worker-1",
    title: "kill -9 of worker-1, restarted at once",
    apply: (n) => n.killAndRestart("worker-1"),
  },
  {
    name: "stop-worker-3",
    title: `SIGSTOP of worker-3 for ${HOLD_MS / 1000} s`,
    apply: (n) => n.freeze("worker-3", HOLD_MS),
  },
  {
    name: "partition-host-d",
    title: `partition of host d (worker-1, worker-2, gateway-1) for ${HOLD_MS / 1000} s`,
    apply: (n) => n.partition("d", HOLD_MS),
  },
  {
    name: "cut-etcd-host-e",
    title: `etcd connections of host e (worker-3, worker-4, gateway-2) cut for ${HOLD_MS / 1000} s`,
    apply: (n) => n.cutEtcd("e", HOLD_MS),
  },
  {
    name: "kill-gateway-1",
    title: "kill -9 of gateway-1, restarted at once",
    apply: (n) => n.killAndRestart("gateway-1"),
  },
  {
    name: "kill-leader",
    title: "kill -9 of the leading scheduler, restarted at once",
    apply: async (n, mh) => n.killAndRestart(await mh.leaderScheduler()),
  },
  {
    name: "stop-leader",
    title: `SIGSTOP of the leading scheduler for ${HOLD_MS / 1000} s`,
    apply: async (n, mh) => n.freeze(await mh.leaderScheduler(), HOLD_MS),
  },
  {
    name: "partition-leader-host",
    title: `partition of the leading scheduler's host (with its etcd member) for ${HOLD_MS / 1000} s`,
    apply: async (n, mh) => n.partition(mh.hostOf(await mh.leaderScheduler()), HOLD_MS),
  },
  {
    name: "cut-etcd-leader",
    title: `etcd connections of the leading scheduler cut for ${HOLD_MS / 1000} s`,
    apply: async (n, mh) => n.cutEtcd(mh.hostOf(await mh.leaderScheduler()), HOLD_MS),
  },
  {
    name: "blackhole-etcd-leader",
    title: `black hole around the etcd leader (etcd-3, moved there first) for ${HOLD_MS / 1000} s`,
    apply: async (n, mh) => n.blackholeEtcd(await mh.etcdLeader(), HOLD_MS),
  },
  {
    name: "redis-failover",
    title: "Redis failover",
    apply: (n) => n.redisFailover(HOLD_MS),
    // Only the Sentinel deployment (sentinelRedis in test/support/multihost.ts) can fail over.
    skipReason: "a single Redis has no failover (TASKMESH_MULTIHOST_REDIS=single)",
  },
];

/** The fault's bound: the TTL of the mechanism that must notice it, + 2 s. */
function boundFor(affected: readonly string[]): number {
  return affected.some((a) => a.startsWith("worker-")) ? WORKER_BOUND_MS : ELECTION_BOUND_MS;
}

const why = missingPrerequisite();
if (why !== undefined) process.stdout.write(`multihost: skipped: ${why}\n`);

describe.skipIf(why !== undefined)("multi-host faults: 5 hosts, 3 etcd members, 2 schedulers, 2 gateways, 4 workers", () => {
  let mh: Multihost | undefined;
  const faults: FaultWindow[] = [];
  const finals = new Map<string, TaskView>();
  let failed = false;
  /** Set when the cluster did not settle before a fault: later cases then wait less for it. */
  let broken: string | undefined;
  let t0 = 0;

  const cluster = (): Multihost => {
    if (mh === undefined) throw new Error("cluster not started");
    return mh;
  };

  /** Waits (bounded) until every task acknowledged up to `upTo` is terminal; returns the rest. */
  async function quiesce(upTo: number, timeoutMs: number): Promise<string[]> {
    const m = cluster();
    const deadline = Date.now() + timeoutMs;
    let pending: string[] = [];
    for (let round = 0; round < 200; round++) {
      pending = (await m.acks()).filter((a) => a.t <= upTo && !TERMINAL.has(finals.get(a.id)?.status ?? "")).map((a) => a.id);
      if (pending.length === 0 || Date.now() > deadline) break;
      for (const t of await m.getTasks(pending, 20_000)) if (TERMINAL.has(t.status ?? "")) finals.set(t.id, t);
      if (pending.every((id) => finals.has(id))) continue;
      await new Promise((r) => setTimeout(r, 500));
    }
    return pending;
  }

  /** The checker over everything so far; tasks still not terminal get their current state. */
  async function runCheck(horizon: number, stillPending: string[], processes?: { name: string; alive: boolean }[]): Promise<CheckReport> {
    const m = cluster();
    const current = stillPending.length > 0 ? await m.getTasks(stillPending, 20_000) : [];
    const finalList: FinalTask[] = [...finals.values(), ...current]
      .filter((t) => t.status !== undefined)
      .map((t) => ({ id: t.id, status: t.status as string, attempt: t.attempt ?? 0, finishedAt: t.finishedAt }));
    const acks = (await m.acks()).filter((a) => a.t <= horizon);
    return check({
      acks,
      records: await m.records(),
      finals: finalList,
      faults,
      deaths: m.deaths,
      processes,
      horizon,
      baselineBoundMs: ELECTION_BOUND_MS,
      gatewayServeBoundMs: GATEWAY_SERVE_BOUND_MS,
    });
  }

  /** Per gateway: ms from `heal` until a call through it succeeds (null: not within the probe time). */
  async function gatewayServeTimes(heal: number): Promise<Record<string, number | null>> {
    const m = cluster();
    const names = ["gateway-1", "gateway-2"];
    const times = await Promise.all(
      names.map(async (g) => {
        const address = m.process(g).address;
        return waitFor(
          async () => {
            await m.agent.request("probe", { gateway: address, timeoutMs: 1000 }, 3000);
            return Date.now() - heal;
          },
          { timeoutMs: GATEWAY_PROBE_MS, intervalMs: 100, what: `${g} serving` },
        ).catch(() => null);
      }),
    );
    return Object.fromEntries(names.map((g, i) => [g, times[i] ?? null]));
  }

  beforeAll(async () => {
    mh = await Multihost.start({ redis: REDIS_MODE === "sentinel" ? sentinelRedis : singleRedis });
    t0 = Date.now();
    process.stdout.write(`multihost: run directory ${mh.runDir} (subnet ${mh.net.subnet}.0/24, Redis ${REDIS_MODE}; kept on failure)\n`);
    await mh.startLoad(LOAD);
    await waitFor(async () => (await cluster().records()).some((r) => r.ev === "end"), { timeoutMs: 30_000, intervalMs: 200, what: "first execution" });
  }, 240_000);

  afterAll(async () => {
    if (mh === undefined) return;
    await mh.close({ keepLogs: failed || KEEP_RUN_DIR });
    if (failed) process.stdout.write(`multihost: FAILED — logs, execution records and acks kept in ${mh.runDir}\n`);
    else if (KEEP_RUN_DIR) process.stdout.write(`multihost: logs, execution records and acks kept in ${mh.runDir} (TASKMESH_MULTIHOST_KEEP=1)\n`);
  }, 60_000);

  it("refuses outsiders on every internal port across hosts: no plaintext, no call without a mesh certificate, no worker hijack", async () => {
    const m = cluster();
    for (const name of ["scheduler-1", "scheduler-2", "config", "worker-1", "worker-4"] as const) {
      const got = await m.intrude(name);
      expect(got.plaintext, `${name} in plaintext`).not.toBe("ok");
      expect(got.noCertificate, `${name} without a certificate`).toBe("Unauthenticated");
    }
  }, 60_000);

  for (const fc of FAULTS) {
    it(`${fc.title}: loses nothing, re-runs only cut-off work, resumes in time`, async (ctx) => {
      onTestFailed(() => {
        failed = true;
      });
      const m = cluster();
      // Back to normal first (a crash of an earlier case is restarted and reported there), and
      // the same etcd leader every time: etcd-3, on the host without a scheduler.
      const restarted = await m.restartDead();
      await m.moveEtcdLeader(ETCD_LEADER).catch(() => undefined);
      const base = await waitFor(
        async () => {
          const s = await m.settled();
          return s.ok ? s : undefined;
        },
        { timeoutMs: broken === undefined ? SETTLE_TIMEOUT_MS : SETTLE_BROKEN_TIMEOUT_MS, intervalMs: 250 },
      ).catch(async () => m.settled());
      if (!base.ok) broken ??= fc.name;
      else broken = undefined;
      if (base.ok) {
        const leader = await m.etcdLeader().catch((err: unknown) => String(err));
        expect(leader, "etcd leader before the fault").toBe(ETCD_LEADER);
      }
      expect(base.why, `cluster not settled before the fault (restarted: ${restarted.join(", ") || "none"}; broken since ${broken ?? "-"})`).toBe("");

      const applied = await fc.apply(new Nemesis(m), m);
      if (applied === undefined) {
        ctx.skip(fc.skipReason ?? "fault not applicable");
        return;
      }
      const [serve, settledAt] = await Promise.all([
        gatewayServeTimes(applied.heal),
        waitFor(async () => ((await m.settled()).ok ? Date.now() : undefined), { timeoutMs: SETTLE_TIMEOUT_MS, intervalMs: 250 }).catch(() => undefined),
      ]);
      const why = settledAt === undefined ? (await m.settled()).why : "";
      const window: FaultWindow = {
        name: fc.name,
        start: applied.start,
        heal: applied.heal,
        end: settledAt ?? Date.now(),
        settled: settledAt !== undefined,
        affected: applied.affected,
        boundMs: boundFor(applied.affected),
        gatewayServeMs: serve,
        error: applied.error,
      };
      faults.push(window);
      const pending = await quiesce(window.end, QUIESCE_TIMEOUT_MS);
      const report = await runCheck(Date.now(), pending);
      const w = report.windows.find((x) => x.name === fc.name);
      const lines = [
        `multihost: ${fc.title}`,
        ...applied.notes.map((n) => `  ${n}`),
        `  heal +${applied.heal - applied.start} ms, settled +${window.end - applied.start} ms${why === "" ? "" : ` (NOT settled: ${why})`}`,
        formatReport({ ...report, windows: w === undefined ? [] : [w], violations: w?.violations ?? [] }, t0)
          .split("\n")
          .slice(1)
          .map((l) => `  ${l}`)
          .join("\n"),
      ];
      process.stdout.write(`${lines.join("\n")}\n`);
      expect(w?.violations.map((v) => `${v.kind}: ${v.detail}`) ?? ["window missing"]).toEqual([]);
    }, 120_000);
  }

  it("loses no acknowledged task over the whole run and leaves every process alive", async () => {
    onTestFailed(() => {
      failed = true;
    });
    const m = cluster();
    const stats = await m.stopLoad();
    const horizonAcks = Date.now();
    const pending = await quiesce(horizonAcks, 60_000);
    const processes = await Promise.all(
      [...m.processes.values()].map(async (p) => ({ name: p.name, alive: p.running && (await m.healthy(p)) })),
    );
    const report = await runCheck(Date.now(), pending, processes);
    process.stdout.write(`multihost: whole run (load: ${JSON.stringify(stats)})\n${formatReport(report, t0)}\n`);
    expect(report.acked).toBeGreaterThan(1000);
    expect(report.lost, "acknowledged tasks lost").toBe(0);
    expect(processes.filter((p) => !p.alive).map((p) => p.name), "processes not alive at the end").toEqual([]);
    expect(report.windows.find((x) => x.name === BASELINE)?.violations.map((v) => `${v.kind}: ${v.detail}`)).toEqual([]);
  }, 180_000);
});
