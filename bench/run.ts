/**
 * `npm run bench`: taskmesh (real processes, end to end through the gateway) side by side with
 * BullMQ (its own queue on the same Redis server, workers in their own processes), in one run on
 * this machine, with the machine's limits beside them. Scenarios (issue "side-by-side benchmark"):
 *   A  enqueue 20,000 noop tasks one call at a time (64 in flight) and in batches of 1,000; drain
 *      them with one worker process at 1 and at 50 slots
 *   B  a steady 200 tasks/s for 20 s, one worker at 1 and at 50 slots: submit→start, submit→done
 *   C  2,000 tasks sleeping 50 ms, one worker with 100 slots: drain time against the ideal 1.0 s
 *   D  1,000 tasks of 20 ms on two workers of 10 slots, kill -9 of one after ~300: lost,
 *      duplicated, recovery (bounded wait, 60 s)
 *   E  Redis bytes per 1,000 queued and per 1,000 finished tasks
 *   limits  redis-benchmark EVALSHA of a trivial script; a bare gRPC stream echo
 * CPU seconds of every process (client, gateway, scheduler, worker, Redis) per 1,000 tasks.
 *
 * Usage: npm run bench [-- <scenario>...] [--quick] [--systems taskmesh,bullmq]
 *        [--tasks 20000] [--rate 200] [--seconds 20] [--crash-wait 60]
 *   scenarios: a|enqueue|drain, b|latency, c|sleep, d|crash, e|memory, limits (default: all)
 *   --quick shrinks every scenario ×10 (a smoke run).
 *   --render <results.json> prints and writes the outputs of a saved run again, measuring nothing.
 * Writes bench/out/results.json, bench/out/results.md and bench/out/results.svg; a full run of
 * every scenario also writes the chart to bench/results.svg.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { startEtcd, startRedis } from "../test/support/backends.js";
import { openBullmq } from "./bullmq-system.js";
import { grpcEchoRates, redisEvalshaRate, type EchoRate, type LuaRate } from "./limits.js";
import { buildRows, cpuTable, markdownTable, svgChart, targets, textTable, type Limits, type RunRecord, type SystemResults } from "./report.js";
import { crash, drain, enqueue, fill, latency, memory } from "./scenarios.js";
import type { BenchEnv, QueueSystem } from "./system.js";
import { openTaskmesh } from "./taskmesh-system.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    quick: { type: "boolean", default: false },
    systems: { type: "string", default: "taskmesh,bullmq" },
    tasks: { type: "string" },
    rate: { type: "string", default: "200" },
    seconds: { type: "string" },
    "crash-wait": { type: "string", default: "60" },
    render: { type: "string" },
  },
});

const ALIASES: Record<string, string> = {
  a: "A", enqueue: "A", drain: "A",
  b: "B", latency: "B",
  c: "C", sleep: "C",
  d: "D", crash: "D",
  e: "E", memory: "E",
  limits: "L", l: "L",
};
const chosen = new Set<string>();
for (const p of positionals) {
  const s = ALIASES[p.toLowerCase()];
  if (s === undefined) {
    process.stderr.write(`unknown scenario ${JSON.stringify(p)}; use ${Object.keys(ALIASES).join(", ")}\n`);
    process.exit(2);
  }
  chosen.add(s);
}
const everything = chosen.size === 0;
const runs = (s: string): boolean => everything || chosen.has(s);
const shrink = values.quick ? 10 : 1;
const systems = new Set(values.systems.split(",").map((s) => s.trim().toLowerCase()));
const N = Number(values.tasks ?? 20_000 / shrink);
const RATE = Number(values.rate);
const SECONDS = Number(values.seconds ?? 20 / shrink);
const CRASH_WAIT_S = Number(values["crash-wait"]);
const out = (s: string): void => void process.stdout.write(`${s}\n`);
const f0 = (v: number): string => Math.round(v).toLocaleString("en-US");
const failures = (t: { errors?: number; firstError?: string }): string =>
  t.errors === undefined ? "" : ` (${t.errors} failed, first: ${t.firstError ?? ""})`;

/** Runs the chosen scenarios on the chosen systems and the limits; returns the run's record. */
async function measure(): Promise<RunRecord> {
  process.env.TASKMESH_LOG_LEVEL ??= "warn";
  const started = new Date();
  const load0 = loadavg();
  const tm: SystemResults = { errors: [] };
  const bull: SystemResults = { errors: [] };
  const limits: Limits = { errors: [] };

  const [redisBackend, etcdBackend] = await Promise.all([startRedis(), startEtcd()]);
  const redisClient = new Redis(redisBackend.address, { maxRetriesPerRequest: null });
  const env: BenchEnv = { redis: redisBackend, etcd: etcdBackend, redisClient };

  type Opener = (env: BenchEnv, label: string) => Promise<QueueSystem>;
  const sides: [string, Opener, SystemResults][] = [];
  if (systems.has("taskmesh")) sides.push(["taskmesh", openTaskmesh, tm]);
  if (systems.has("bullmq")) sides.push(["BullMQ", openBullmq, bull]);

  /** Runs one scenario on every system: a fresh instance each, Redis emptied between them. */
  async function scenario(label: string, body: (sys: QueueSystem, res: SystemResults) => Promise<void>): Promise<void> {
    for (const [name, open, res] of sides) {
      let sys: QueueSystem | undefined;
      try {
        sys = await open(env, label);
        await body(sys, res);
      } catch (err) {
        const msg = `${label}: ${err instanceof Error ? err.message : String(err)}`;
        res.errors.push(msg);
        out(`  ${name} FAILED ${msg}`);
      } finally {
        await sys?.close().catch(() => undefined);
        await redisClient.flushall();
      }
    }
  }

  try {
    if (runs("A")) {
      out(`A: ${f0(N)} noop tasks: enqueue one at a time / batched, drain at 1 / 50 slots`);
      await scenario("a", async (sys, res) => {
        res.enqueueSingle = await enqueue(sys, env, N, "single");
        out(`  ${sys.name} enqueue one at a time (64 in flight): ${f0(res.enqueueSingle.perSecond)} tasks/s${failures(res.enqueueSingle)}`);
        res.drain1 = await drain(sys, env, 1, "drain1");
        out(`  ${sys.name} drain 1 slot: ${f0(res.drain1.perSecond)} tasks/s (worker start ${res.drain1.workerStartS.toFixed(2)} s)`);
        res.enqueueBatched = await enqueue(sys, env, N, "batched");
        out(`  ${sys.name} enqueue batched: ${f0(res.enqueueBatched.perSecond)} tasks/s${failures(res.enqueueBatched)}`);
        res.drain50 = await drain(sys, env, 50, "drain50");
        out(`  ${sys.name} drain 50 slots: ${f0(res.drain50.perSecond)} tasks/s (worker start ${res.drain50.workerStartS.toFixed(2)} s)`);
      });
    }
    if (runs("B")) {
      out(`B: ${RATE} stamp tasks/s for ${SECONDS} s, one call each; one worker at 1 and at 50 slots`);
      await scenario("b", async (sys, res) => {
        for (const slots of [1, 50] as const) {
          const r = await latency(sys, env, { rate: RATE, seconds: SECONDS, slots });
          if (slots === 1) res.latency1 = r;
          else res.latency50 = r;
          const p = (x: { p50: number; p99: number; max: number }): string =>
            `p50 ${x.p50.toFixed(2)} p99 ${x.p99.toFixed(2)} max ${x.max.toFixed(1)} ms`;
          out(`  ${sys.name} ${slots} slot(s): submit→start ${p(r.submitToStartMs)}; submit→done ${p(r.submitToDoneMs)}`);
          if (r.errors !== undefined) out(`  ${sys.name} ${slots} slot(s): ${r.errors} submit calls failed, first: ${r.firstError ?? ""}`);
        }
      });
    }
    if (runs("C")) {
      const n = 2000 / shrink;
      const idealS = (n * 50) / 100 / 1000;
      out(`C: ${f0(n)} tasks sleeping 50 ms, one worker with 100 slots (ideal ${idealS.toFixed(2)} s)`);
      await scenario("c", async (sys, res) => {
        await fill(sys, n, { type: "sleep", ms: 50 });
        const d = await drain(sys, env, 100, "sleep100");
        res.sleepDrain = { ...d, idealS, factor: d.seconds / idealS };
        out(`  ${sys.name}: ${d.seconds.toFixed(3)} s = ${res.sleepDrain.factor.toFixed(2)}× ideal`);
      });
    }
    if (runs("D")) {
      const n = 1000 / shrink;
      out(`D: ${f0(n)} tasks of 20 ms on 2 workers × 10 slots; kill -9 of one after ~${f0(n * 0.3)} (wait ≤ ${CRASH_WAIT_S} s)`);
      await scenario("d", async (sys, res) => {
        res.crash = await crash(sys, { tasks: n, killAfter: n * 0.3, sleepMs: 20, waitS: CRASH_WAIT_S });
        const c = res.crash;
        const s = (v: number | null): string => (v === null ? `not within ${c.waitS} s` : `${v.toFixed(2)} s`);
        out(`  ${sys.name}: ${c.inFlightAtKill} in flight at the kill; lost ${c.lost}, duplicated ${c.duplicated}, recovery ${s(c.recoveryS)}, all done ${s(c.allDoneS)}`);
      });
    }
    if (runs("E")) {
      const n = 1000 / shrink;
      out(`E: Redis bytes of ${f0(n)} noop tasks queued, then finished`);
      await scenario("e", async (sys, res) => {
        res.memory = await memory(sys, n);
        out(`  ${sys.name}: ${f0(res.memory.queuedBytesPer1000)} B per 1,000 queued, ${f0(res.memory.finishedBytesPer1000)} B per 1,000 finished`);
      });
    }
    if (runs("L")) {
      out("limits: redis-benchmark EVALSHA of a trivial script; bare gRPC stream echo");
      try {
        const r: LuaRate[] = [];
        for (const o of [
          { clients: 1, pipeline: 1, requests: 50_000 / shrink },
          { clients: 50, pipeline: 1, requests: 200_000 / shrink },
          { clients: 50, pipeline: 16, requests: 1_000_000 / shrink },
        ]) {
          r.push(await redisEvalshaRate(redisClient, redisBackend.port, o));
          out(`  EVALSHA ${o.clients} client(s), pipeline ${o.pipeline}: ${f0(r.at(-1)?.perSecond ?? NaN)} calls/s`);
        }
        limits.redisEvalsha = r;
      } catch (err) {
        limits.errors.push(`redis-benchmark: ${String(err)}`);
        out(`  redis-benchmark FAILED ${String(err)}`);
      }
      try {
        const e: EchoRate[] = await grpcEchoRates([1, 16, 128], 200_000 / shrink);
        for (const x of e) out(`  gRPC echo, ${x.batch} task(s)/message: ${f0(x.perSecond)} tasks/s`);
        limits.grpcEcho = e;
      } catch (err) {
        limits.errors.push(`gRPC echo: ${String(err)}`);
        out(`  gRPC echo FAILED ${String(err)}`);
      }
    }
  } finally {
    redisClient.disconnect();
    await Promise.all([redisBackend.stop(), etcdBackend.stop()]);
  }

  const load1 = loadavg();
  return {
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
    quick: values.quick,
    complete: everything && sides.length === 2,
    startedAt: started.toISOString(),
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? "",
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
      redis: "redis-server 7.0 (Debian), no persistence",
      bullmq: "6.7.0",
      loadAverage: { before: load0, after: load1 },
    },
    taskmesh: tm,
    bullmq: bull,
    limits,
  };
}

/** Prints the table, targets and CPU table; writes bench/out/results.{json,md,svg} (and bench/results.svg for a complete full run). */
function publish(r: RunRecord): void {
  const rows = buildRows(r.taskmesh, r.bullmq, r.limits);
  const tg = targets(rows);
  const m = r.machine;
  const load = `load avg ${m.loadAverage.before[0]?.toFixed(1)} → ${m.loadAverage.after[0]?.toFixed(1)}`;
  const subtitle = `${m.cpus} × ${m.cpuModel}, Node ${m.node}, Redis 7.0, BullMQ ${m.bullmq} — ${r.startedAt.slice(0, 16)}Z${r.quick ? " — QUICK (×1/10)" : ""} — ${load}`;
  out("");
  out(textTable(rows));
  out("");
  out("targets:");
  for (const t of tg) out(`  ${t.pass === undefined ? "n/a " : t.pass ? "PASS" : "FAIL"}  ${t.name}: ${t.rule} (${t.value})`);
  for (const [name, x] of [["taskmesh", r.taskmesh], ["BullMQ", r.bullmq], ["limits", r.limits]] as const) {
    for (const e of x.errors) out(`  error (${name}): ${e}`);
  }
  out("");
  out("CPU ms per 1,000 tasks, by process:");
  const cpu = cpuTable(r.taskmesh, r.bullmq);
  out(cpu);
  const dir = join(import.meta.dirname, "out");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "results.json"), JSON.stringify({ ...r, rows, targets: tg }, null, 2));
  const pf = (p: boolean | undefined): string => (p === undefined ? "n/a" : p ? "PASS" : "FAIL");
  writeFileSync(
    join(dir, "results.md"),
    `Command: \`${r.command}\` — ${subtitle}\n\n${markdownTable(rows)}\n\nTargets:\n\n${tg.map((t) => `- ${pf(t.pass)} ${t.name}: ${t.rule} (${t.value})`).join("\n")}\n\nCPU ms per 1,000 tasks:\n\n${cpu}\n`,
  );
  writeFileSync(join(dir, "results.svg"), svgChart(r.taskmesh, r.bullmq, subtitle));
  const full = r.complete && !r.quick;
  if (full) copyFileSync(join(dir, "results.svg"), join(import.meta.dirname, "results.svg"));
  out(`results written to bench/out/results.{json,md,svg}${full ? " and bench/results.svg" : ""}`);
}

publish(values.render === undefined ? await measure() : (JSON.parse(readFileSync(values.render, "utf8")) as RunRecord));
