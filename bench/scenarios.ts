/**
 * The scenarios of the side-by-side benchmark, written once against {@link QueueSystem} and run
 * on taskmesh and on BullMQ in the same run. Each returns plain numbers (JSON-ready) with the CPU
 * milliseconds that every involved process spent per 1,000 tasks in the measured window.
 */
import { cpuPer1000, cpuSnapshot, percentiles, pool, sleep, wallMs, type Percentiles, type ProcessMap } from "./stats.js";
import type { BenchEnv, BenchTask, QueueSystem, WorkerHandle } from "./system.js";

/** CPU milliseconds per 1,000 tasks, by process role (client, gateway, scheduler, worker, redis…). */
export type CpuPer1000 = Record<string, number>;

/** A rate measurement. */
export interface Throughput {
  tasks: number;
  /** Tasks whose submit call failed (not counted in `tasks`); the first error's text in `firstError`. */
  errors?: number;
  firstError?: string;
  seconds: number;
  perSecond: number;
  cpuMsPer1000: CpuPer1000;
}

/** A drain measurement: from the first task leaving the queue to the last one finished. */
export interface Drain extends Throughput {
  slots: number;
  /** Worker start (spawn → first task taken), seconds; not part of `seconds`. */
  workerStartS: number;
}

/** Scenario B's numbers. */
export interface Latency {
  rate: number;
  seconds: number;
  slots: number;
  tasks: number;
  /** Submit calls that failed (left out of the percentiles), and the first one's text. */
  errors?: number;
  firstError?: string;
  /** The submit call itself: sent → answered (client clock, sub-ms). */
  submitCallMs: Percentiles;
  /** Submit (client, sub-ms) → handler start (worker, sub-ms). */
  submitToStartMs: Percentiles;
  /** Submit → the system's own start time (ms resolution, +0.5 ms: taskmesh claim, BullMQ processedOn). */
  submitToSystemStartMs: Percentiles;
  /** Submit → the system's finish time (ms resolution, +0.5 ms: taskmesh finished_at, BullMQ finishedOn). */
  submitToDoneMs: Percentiles;
  cpuMsPer1000: CpuPer1000;
}

/** Scenario D's numbers. */
export interface Crash {
  tasks: number;
  /** Tasks started and not finished when the worker was killed (both workers). */
  inFlightAtKill: number;
  /** Not succeeded within `waitS` of the kill. */
  lost: number;
  /** Started more than once. */
  duplicated: number;
  /** Kill → every task in flight at the kill finished; null when not within `waitS`. */
  recoveryS: number | null;
  /** Kill → all tasks finished; null when not within `waitS`. */
  allDoneS: number | null;
  waitS: number;
}

/** Scenario E's numbers. */
export interface Memory {
  tasks: number;
  /** The system's keys before the tasks (queue metadata), bytes. */
  baseBytes: number;
  queuedBytesPer1000: number;
  finishedBytesPer1000: number;
  method: string;
}

const POLL_MS = 5;
/** A drain that neither starts nor finishes a task for this long has failed. */
const STALL_MS = 60_000;

/** The processes whose CPU a scenario accounts: this process (the client), Redis, the system's servers, workers. */
function processes(sys: QueueSystem, env: BenchEnv, workers: Record<string, WorkerHandle> = {}): ProcessMap {
  const p: ProcessMap = { client: process.pid, ...sys.servers(), redis: env.redis.process.pid ?? 0 };
  for (const [role, w] of Object.entries(workers)) {
    const pid = w.pid();
    if (pid !== undefined) p[role] = pid;
  }
  return p;
}

function tasksOf(n: number, task: BenchTask): BenchTask[] {
  return Array.from({ length: n }, () => task);
}

/** Waits, polling every `intervalMs`, until `check` is true; false when `timeoutMs` passes first. */
async function until(check: () => Promise<boolean>, timeoutMs: number, intervalMs = POLL_MS): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (performance.now() > deadline) return false;
    await sleep(intervalMs);
  }
}

/** Rejects as soon as the worker fails to start, so a poll loop does not wait out its deadline. */
function watchStart(worker: WorkerHandle): () => void {
  let failure: unknown;
  worker.ready.catch((err: unknown) => {
    failure = err ?? new Error("worker failed to start");
  });
  return () => {
    if (failure !== undefined) throw failure;
  };
}

/** Enqueues `n` tasks in batches of 1,000, four calls in flight (setup, not measured). */
export async function fill(sys: QueueSystem, n: number, task: BenchTask): Promise<string[]> {
  const chunks = await pool(Math.ceil(n / 1000), 4, (i) => sys.submitBatch(tasksOf(Math.min(1000, n - i * 1000), task)));
  return chunks.flat();
}

/**
 * Scenario A, enqueue: `n` noop tasks, one call each with 64 in flight (`single`), or SubmitTasks
 * / addBulk of 1,000 with 4 calls in flight (`batched`). No worker runs.
 */
export async function enqueue(sys: QueueSystem, env: BenchEnv, n: number, mode: "single" | "batched"): Promise<Throughput> {
  const procs = processes(sys, env);
  const errs = errorCounter();
  const c0 = cpuSnapshot(procs);
  const t0 = performance.now();
  if (mode === "single") {
    await pool(n, 64, () => sys.submit({ type: "noop" }).catch(errs.add(1)));
  } else {
    await pool(Math.ceil(n / 1000), 4, (i) => {
      const k = Math.min(1000, n - i * 1000);
      return sys.submitBatch(tasksOf(k, { type: "noop" })).catch(errs.add(k));
    });
  }
  const seconds = (performance.now() - t0) / 1000;
  const ok = n - errs.count;
  return { tasks: ok, ...errs.fields(), seconds, perSecond: ok / seconds, cpuMsPer1000: cpuPer1000(c0, cpuSnapshot(procs), ok) };
}

/** Counts failed submit calls instead of aborting a scenario on the first one. */
function errorCounter(): { count: number; add(k: number): (err: unknown) => undefined; fields(): { errors?: number; firstError?: string } } {
  let first: string | undefined;
  const c = {
    count: 0,
    add(k: number) {
      return (err: unknown): undefined => {
        c.count += k;
        first ??= err instanceof Error ? err.message : String(err);
        return undefined;
      };
    },
    fields() {
      return c.count === 0 || first === undefined ? {} : { errors: c.count, firstError: first };
    },
  };
  return c;
}

/**
 * Scenarios A (drain) and C: starts one worker with `slots` on a queue already full and measures
 * from the first task leaving the queue (polled every 5 ms) to every waiting task finished.
 */
export async function drain(sys: QueueSystem, env: BenchEnv, slots: number, name: string): Promise<Drain> {
  const before = await sys.counts();
  const n = before.waiting;
  const tSpawn = performance.now();
  const worker = sys.startWorker(name, slots);
  const started = watchStart(worker);
  let t0: number | undefined;
  let procs: ProcessMap = {};
  let c0 = {};
  let last = before;
  let progressAt = performance.now();
  const done = await until(async () => {
    started();
    const c = await sys.counts();
    if (c.finished !== last.finished || c.waiting !== last.waiting) progressAt = performance.now();
    last = c;
    if (performance.now() - progressAt > STALL_MS) {
      throw new Error(`${sys.name}: no progress for ${STALL_MS / 1000} s (waiting ${c.waiting}, active ${c.active}, finished ${c.finished - before.finished} of ${n})`);
    }
    if (t0 === undefined && c.waiting < n) {
      t0 = performance.now();
      procs = processes(sys, env, { worker });
      c0 = cpuSnapshot(procs);
    }
    return c.finished - before.finished >= n;
  }, 600_000);
  const t1 = performance.now();
  const c1 = cpuSnapshot(procs);
  await worker.ready;
  await worker.stop();
  if (!done || t0 === undefined) throw new Error(`${sys.name}: ${n} tasks not drained in 600 s`);
  const seconds = (t1 - t0) / 1000;
  return {
    tasks: n,
    slots,
    seconds,
    perSecond: n / seconds,
    workerStartS: (t0 - tSpawn) / 1000,
    cpuMsPer1000: cpuPer1000(c0, c1, n),
  };
}

/**
 * Scenario B: one worker with `slots`; `rate` stamp tasks per second for `seconds`, each sent
 * one call at a time on schedule (open loop); submit→start measured in the worker (sub-ms),
 * submit→done from the system's finish time (ms).
 */
export async function latency(
  sys: QueueSystem,
  env: BenchEnv,
  o: { rate: number; seconds: number; slots: number },
): Promise<Latency> {
  const worker = sys.startWorker(`lat${o.slots}`, o.slots);
  await worker.ready;
  try {
    // Warm up connections, code paths and the worker's stream. A taskmesh scheduler accepts a
    // type that is not built in only once it has seen a worker announce it: retry until then.
    const warm: string[] = [];
    const deadline = performance.now() + 30_000;
    while (warm.length < 50) {
      try {
        warm.push(await sys.submit({ type: "stamp" }));
      } catch (err) {
        if (warm.length > 0 || performance.now() > deadline) throw err;
        await sleep(50);
      }
    }
    if (!(await until(async () => (await sys.countFinished(warm)) === warm.length, 60_000, 50))) {
      throw new Error(`${sys.name}: warm-up tasks not done in 60 s`);
    }
    const procs = processes(sys, env, { worker });
    const c0 = cpuSnapshot(procs);
    const total = Math.round(o.rate * o.seconds);
    const subs: ({ id: string; at: number; call: number } | undefined)[] = new Array(total);
    const errs = errorCounter();
    const pending: Promise<void>[] = [];
    const t0 = performance.now();
    for (let i = 0; i < total; i++) {
      const wait = t0 + (i * 1000) / o.rate - performance.now();
      if (wait > 0) await sleep(wait);
      const at = wallMs();
      pending.push(
        sys.submit({ type: "stamp" }).then((id) => {
          subs[i] = { id, at, call: wallMs() - at };
        }, errs.add(1)),
      );
    }
    await Promise.all(pending);
    const accepted = subs.filter((x) => x !== undefined);
    const ids = accepted.map((x) => x.id);
    if (!(await until(async () => (await sys.countFinished(ids)) === ids.length, 120_000, 20))) {
      throw new Error(`${sys.name}: latency tasks not done in 120 s`);
    }
    const c1 = cpuSnapshot(procs);
    const outcomes = await sys.outcomes(ids);
    const start: number[] = [];
    const systemStart: number[] = [];
    const done: number[] = [];
    for (const [i, r] of outcomes.entries()) {
      const at = (accepted[i] as { at: number }).at;
      if (r.handlerStartMs !== undefined) start.push(r.handlerStartMs - at);
      // Whole-millisecond stamps are floors of the true time: +0.5 ms centres them (both systems).
      if (r.startedAtMs !== undefined) systemStart.push(r.startedAtMs + 0.5 - at);
      if (r.finishedAtMs !== undefined) done.push(r.finishedAtMs + 0.5 - at);
    }
    return {
      rate: o.rate,
      seconds: o.seconds,
      slots: o.slots,
      tasks: ids.length,
      ...errs.fields(),
      submitCallMs: percentiles(accepted.map((x) => x.call)),
      submitToStartMs: percentiles(start),
      submitToSystemStartMs: percentiles(systemStart),
      submitToDoneMs: percentiles(done),
      cpuMsPer1000: cpuPer1000(c0, c1, ids.length),
    };
  } finally {
    await worker.stop();
  }
}

/**
 * Scenario D: two workers with 10 slots each run `tasks` tasks sleeping `sleepMs`; after
 * `killAfter` finished, one worker is killed with SIGKILL. Waits at most `waitS` after the kill.
 */
export async function crash(
  sys: QueueSystem,
  o: { tasks: number; killAfter: number; sleepMs: number; waitS: number },
): Promise<Crash> {
  const victim = sys.startWorker("crash1", 10);
  const survivor = sys.startWorker("crash2", 10);
  try {
    await Promise.all([victim.ready, survivor.ready]);
    const ids = await pool(Math.ceil(o.tasks / 500), 2, (i) =>
      sys.submitBatch(tasksOf(Math.min(500, o.tasks - i * 500), { type: "sleep", ms: o.sleepMs })),
    ).then((c) => c.flat());
    if (!(await until(async () => (await sys.counts()).finished >= o.killAfter, 60_000))) {
      throw new Error(`${sys.name}: ${o.killAfter} tasks not done in 60 s`);
    }
    const inFlight = await sys.activeIds();
    const tKill = performance.now();
    await victim.kill();
    const left = (): number => o.waitS * 1000 - (performance.now() - tKill);
    const recovered = await until(async () => (await sys.countFinished(inFlight)) === inFlight.length, left(), 10);
    const recoveryS = recovered ? (performance.now() - tKill) / 1000 : null;
    const allDone = await until(async () => (await sys.countFinished(ids)) === ids.length, Math.max(0, left()), 20);
    const allDoneS = allDone ? (performance.now() - tKill) / 1000 : null;
    const outcomes = await sys.outcomes(ids);
    return {
      tasks: ids.length,
      inFlightAtKill: inFlight.length,
      lost: outcomes.filter((r) => !r.succeeded).length,
      duplicated: outcomes.filter((r) => r.starts > 1).length,
      recoveryS,
      allDoneS,
      waitS: o.waitS,
    };
  } finally {
    await Promise.all([victim.kill(), survivor.stop()]);
  }
}

/**
 * Scenario E: Redis bytes of the system's keys per 1,000 noop tasks queued, then per 1,000
 * finished (one worker with 50 slots ran them; both systems keep finished tasks by default).
 */
export async function memory(sys: QueueSystem, n: number): Promise<Memory> {
  const baseBytes = await sys.redisBytes();
  await fill(sys, n, { type: "noop" });
  const queued = await sys.redisBytes();
  const worker = sys.startWorker("mem", 50);
  const started = watchStart(worker);
  const ok = await until(async () => {
    started();
    return (await sys.counts()).finished >= n;
  }, 120_000, 20);
  await worker.ready;
  await worker.stop();
  if (!ok) throw new Error(`${sys.name}: memory tasks not done in 120 s`);
  const finished = await sys.redisBytes();
  return {
    tasks: n,
    baseBytes,
    queuedBytesPer1000: ((queued - baseBytes) * 1000) / n,
    finishedBytesPer1000: ((finished - baseBytes) * 1000) / n,
    method: "MEMORY USAGE <key> SAMPLES 0 summed over SCAN MATCH <system prefix>*",
  };
}
