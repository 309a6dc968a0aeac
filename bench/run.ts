/**
 * `npm run bench`: end-to-end numbers through the gateway on this machine, with real etcd, Redis
 * and service processes. Scenarios:
 *   latency — a steady 200 noop tasks/s for 20 s: submit→start and submit→done p50/p95/p99/max
 *   drain   — 20,000 noop tasks queued, then one worker (50 slots) drains them: tasks/s
 *   crash   — 1,000 tasks sleeping 20 ms on 2 workers; kill -9 one worker after ~300 finished:
 *             lost, re-run (duplicated) and recovery seconds
 * Usage: npm run bench [-- latency|drain|crash] [--rate 200] [--seconds 20] [--tasks 20000]
 * Writes bench/out/results.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { TaskStatus } from "../gen/taskmesh/v1/task_pb.js";
import { startEtcd, startRedis } from "../test/support/backends.js";
import { gatewayClients } from "../test/support/clients.js";
import { startMesh } from "../test/support/mesh.js";
import { waitFor } from "../test/support/wait.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    rate: { type: "string", default: "200" },
    seconds: { type: "string", default: "20" },
    tasks: { type: "string", default: "20000" },
    slots: { type: "string", default: "50" },
  },
});
const scenarios = positionals.length > 0 ? positionals : ["latency", "drain", "crash"];
const out = (s: string): void => void process.stdout.write(`${s}\n`);

function ms(t: { seconds: bigint; nanos: number } | undefined): number {
  return t === undefined ? NaN : Number(t.seconds) * 1000 + t.nanos / 1e6;
}

function percentiles(xs: number[]): { p50: number; p95: number; p99: number; max: number; n: number } {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: s.at(-1) ?? NaN, n: s.length };
}

const results: Record<string, unknown> = { machine: { cpus: (await import("node:os")).cpus().length, node: process.version } };
process.env.TASKMESH_LOG_LEVEL = "warn";
const [redis, etcd] = await Promise.all([startRedis(), startEtcd()]);
try {
  if (scenarios.includes("latency")) {
    const rate = Number(values.rate);
    const seconds = Number(values.seconds);
    const mesh = await startMesh({
      etcdEndpoint: etcd.address,
      redisUrl: redis.address,
      prefix: "bench-lat",
      workers: 1,
      slots: Number(values.slots),
    });
    try {
      const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
      // Warm up connections and code paths.
      for (let i = 0; i < 50; i++) await c.tasks.submitTask({ type: "noop" });
      const submits: { id: string; at: number }[] = [];
      const total = rate * seconds;
      const t0 = performance.now();
      const wall0 = Date.now();
      const inflight: Promise<void>[] = [];
      for (let i = 0; i < total; i++) {
        const due = t0 + (i * 1000) / rate;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        const at = wall0 + (performance.now() - t0);
        inflight.push(
          c.tasks.submitTask({ type: "noop" }).then((t) => {
            submits.push({ id: t.id, at });
          }),
        );
      }
      await Promise.all(inflight);
      const start: number[] = [];
      const done: number[] = [];
      await waitFor(
        async () => {
          start.length = 0;
          done.length = 0;
          for (let i = 0; i < submits.length; i += 100) {
            const batch = submits.slice(i, i + 100);
            const got = await Promise.all(batch.map((s) => c.tasks.getTask({ taskId: s.id })));
            for (const [j, t] of got.entries()) {
              if (t.status !== TaskStatus.SUCCEEDED) return false;
              const s = batch[j] as { at: number };
              start.push(ms(t.startedAt) - s.at);
              done.push(ms(t.finishedAt) - s.at);
            }
          }
          return true;
        },
        { timeoutMs: 120_000, intervalMs: 500, what: "latency tasks done" },
      );
      const r = { rate, seconds, submitToStartMs: percentiles(start), submitToDoneMs: percentiles(done) };
      results.latency = r;
      out(`latency: ${rate}/s for ${seconds}s, ${r.submitToStartMs.n} tasks (server timestamps have 1 ms resolution)`);
      out(`  submit→start ms  p50 ${r.submitToStartMs.p50.toFixed(1)}  p95 ${r.submitToStartMs.p95.toFixed(1)}  p99 ${r.submitToStartMs.p99.toFixed(1)}  max ${r.submitToStartMs.max.toFixed(1)}`);
      out(`  submit→done  ms  p50 ${r.submitToDoneMs.p50.toFixed(1)}  p95 ${r.submitToDoneMs.p95.toFixed(1)}  p99 ${r.submitToDoneMs.p99.toFixed(1)}  max ${r.submitToDoneMs.max.toFixed(1)}`);
    } finally {
      await mesh.close();
    }
  }

  if (scenarios.includes("drain")) {
    const n = Number(values.tasks);
    const mesh = await startMesh({
      etcdEndpoint: etcd.address,
      redisUrl: redis.address,
      prefix: "bench-drain",
      workers: 0,
      slots: Number(values.slots),
    });
    try {
      const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
      const tSubmit = performance.now();
      const batches: Promise<unknown>[] = [];
      for (let i = 0; i < n; i += 1000) {
        batches.push(c.tasks.submitTasks({ tasks: Array.from({ length: Math.min(1000, n - i) }, () => ({ type: "noop" })) }));
        if (batches.length >= 4) await Promise.all(batches.splice(0));
      }
      await Promise.all(batches);
      const submitS = (performance.now() - tSubmit) / 1000;
      const depth = async (): Promise<{ queued: bigint; running: bigint }> => {
        const s = await c.cluster.getClusterStatus({});
        const q = s.queues.find((x) => x.name === "default");
        return { queued: q?.queued ?? 0n, running: q?.running ?? 0n };
      };
      const before = await depth();
      const tDrain = performance.now();
      await mesh.addWorker("bench-drain-w1");
      const tReady = performance.now();
      await waitFor(
        async () => {
          const d = await depth();
          return d.queued === 0n && d.running === 0n;
        },
        { timeoutMs: 300_000, intervalMs: 50, what: "queue drained" },
      );
      const drainS = (performance.now() - tReady) / 1000;
      const r = {
        tasks: n,
        queuedBefore: Number(before.queued),
        submitPerSecond: n / submitS,
        drainPerSecond: n / drainS,
        workerStartS: (tReady - tDrain) / 1000,
      };
      results.drain = r;
      out(`drain: ${n} noop tasks, 1 worker at ${values.slots} slots`);
      out(`  batched submit through the gateway: ${r.submitPerSecond.toFixed(0)} tasks/s`);
      out(`  drain (from worker healthy to queue empty): ${r.drainPerSecond.toFixed(0)} tasks/s`);
    } finally {
      await mesh.close();
    }
  }
  if (scenarios.includes("crash")) {
    const mesh = await startMesh({
      etcdEndpoint: etcd.address,
      redisUrl: redis.address,
      prefix: "bench-crash",
      workers: 2,
      slots: 10,
    });
    try {
      const c = gatewayClients(mesh.gateway.address, mesh.apiKey);
      const ids: string[] = [];
      for (let i = 0; i < 1000; i += 500) {
        const r = await c.tasks.submitTasks({
          tasks: Array.from({ length: 500 }, (_, j) => ({ type: "sleep", payload: { ms: 20 }, affinityKey: `c${i + j}` })),
        });
        ids.push(...r.tasks.map((t) => t.id));
      }
      const depth = async (): Promise<{ done: number; running: number }> => {
        const s = await c.cluster.getClusterStatus({});
        const q = s.queues.find((x) => x.name === "default");
        const waiting = Number((q?.queued ?? 0n) + (q?.delayed ?? 0n) + (q?.retryWait ?? 0n));
        const running = Number(q?.running ?? 0n);
        return { done: ids.length - waiting - running, running };
      };
      await waitFor(async () => (await depth()).done >= 300, { timeoutMs: 60_000, intervalMs: 5 });
      const victim = mesh.workers[0];
      if (victim === undefined) throw new Error("no worker");
      const running: string[] = [];
      for (let p = ""; ; ) {
        const page = await c.tasks.listTasks({ status: TaskStatus.RUNNING, pageSize: 1000, pageToken: p });
        for (const t of page.tasks) if (t.workerId === victim.name) running.push(t.id);
        p = page.nextPageToken;
        if (p === "") break;
      }
      const tKill = performance.now();
      await victim.kill();
      await waitFor(
        async () => {
          const ts = await Promise.all(running.map((id) => c.tasks.getTask({ taskId: id })));
          return ts.every((t) => t.workerId !== victim.name || t.status !== TaskStatus.RUNNING);
        },
        { timeoutMs: 30_000, intervalMs: 5 },
      );
      const recoveryS = (performance.now() - tKill) / 1000;
      await waitFor(async () => (await depth()).done >= ids.length, { timeoutMs: 120_000, intervalMs: 50 });
      const final: { status: TaskStatus; attempt: number }[] = [];
      for (let i = 0; i < ids.length; i += 100) {
        final.push(...(await Promise.all(ids.slice(i, i + 100).map((id) => c.tasks.getTask({ taskId: id })))));
      }
      const r = {
        tasks: ids.length,
        inFlightOnVictim: running.length,
        lost: final.filter((t) => t.status !== TaskStatus.SUCCEEDED).length,
        duplicated: final.filter((t) => t.attempt > 1).length,
        recoveryS,
      };
      results.crash = r;
      out(`crash: ${r.tasks} tasks, kill -9 of one of 2 workers with ${r.inFlightOnVictim} in flight`);
      out(`  lost ${r.lost}, re-run ${r.duplicated}, its tasks re-queued ${(r.recoveryS * 1000).toFixed(0)} ms after the kill`);
    } finally {
      await mesh.close();
    }
  }
} finally {
  await Promise.all([redis.stop(), etcd.stop()]);
}
mkdirSync(join(import.meta.dirname, "out"), { recursive: true });
writeFileSync(join(import.meta.dirname, "out", "results.json"), JSON.stringify(results, null, 2));
out("results written to bench/out/results.json");
