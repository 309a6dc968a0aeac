/**
 * End-to-end behaviour of the task lifecycle, against real etcd, Redis and service processes:
 * priorities and aging, delayed tasks, retries with backoff, timeouts that really stop work,
 * cancellation, dead letters and RetryTask, result TTL (bounded Redis memory), idempotency keys,
 * per-key concurrency limits, per-queue pause/resume, and the queue depths GetClusterStatus
 * reports for autoscaling.
 *
 * Three meshes are shared by the describes (each test uses its own queues, so they do not
 * interfere), started in parallel to keep the file fast:
 * - `solo`: one worker with ONE slot and the scheduler aging one priority level per 200 ms, for
 *   everything that depends on start order or on a single slot being taken or freed;
 * - `pool`: two workers with 8 slots each;
 * - `ttl`: one worker, used only by the result-TTL test, whose Redis prefix must end up holding
 *   no per-task key at all.
 */
import { randomBytes } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { durationFromMs, durationMs, timestampFromMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { QueueStats } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { Priority, TaskStatus, type Task, type TaskEvent, type TaskError } from "../../gen/taskmesh/v1/task_pb.js";
import { gatewayClients, waitTerminal, type GatewayClients } from "../support/clients.js";
import { uniquePrefix } from "../support/ids.js";
import { startMesh, type Mesh, type MeshOptions } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

const handlers = join(import.meta.dirname, "../fixtures/handlers/lifecycle.ts");

/** Aging of the `solo` mesh's scheduler: waiting time worth one priority level. */
const AGING_MS = 200;

interface Env {
  mesh: Mesh;
  c: GatewayClients;
}

let solo: Env;
let pool: Env;
let ttl: Env;
const opened: Mesh[] = [];

beforeAll(async () => {
  const common = { etcdEndpoint: inject("etcdEndpoint"), redisUrl: inject("redisUrl") };
  const specs: MeshOptions[] = [
    {
      ...common,
      prefix: uniquePrefix("lc-solo"),
      workers: 1,
      slots: 1,
      workerArgs: ["--handlers", handlers],
      schedulerArgs: ["--aging-ms", String(AGING_MS)],
    },
    { ...common, prefix: uniquePrefix("lc-pool"), workers: 2, slots: 8, workerArgs: ["--handlers", handlers] },
    { ...common, prefix: uniquePrefix("lc-ttl"), workers: 1, slots: 4 },
  ];
  const started = await Promise.allSettled(specs.map((s) => startMesh(s)));
  for (const r of started) if (r.status === "fulfilled") opened.push(r.value);
  const failed = started.find((r) => r.status === "rejected");
  if (failed !== undefined) throw failed.reason;
  const env = (m: Mesh): Env => ({ mesh: m, c: gatewayClients(m.gateway.address, m.apiKey) });
  [solo, pool, ttl] = opened.map(env) as [Env, Env, Env];
}, 90_000);

afterAll(async () => {
  await Promise.all(opened.map((m) => m.close()));
});

// ---- helpers ---------------------------------------------------------------------------------

function ms(t: Timestamp | undefined): number {
  return t === undefined ? NaN : Number(t.seconds) * 1000 + t.nanos / 1e6;
}

function dur(d: Duration | undefined): number {
  return d === undefined ? NaN : durationMs(d);
}

/** A queue name unique to one test. */
function queueName(name: string): string {
  return `${name}-${randomBytes(3).toString("hex")}`;
}

async function status(c: GatewayClients, id: string): Promise<TaskStatus> {
  return (await c.tasks.getTask({ taskId: id })).status;
}

/** Waits until the task has `want` status; returns it. */
async function waitStatus(c: GatewayClients, id: string, want: TaskStatus, timeoutMs = 10_000): Promise<Task> {
  return waitFor(
    async () => {
      const t = await c.tasks.getTask({ taskId: id });
      return t.status === want ? t : undefined;
    },
    { timeoutMs, intervalMs: 20, what: `task ${id} ${TaskStatus[want]}` },
  );
}

/** The stats of one queue from GetClusterStatus (undefined when the queue is unknown). */
async function queueStats(c: GatewayClients, queue: string): Promise<QueueStats | undefined> {
  const s = await c.cluster.getClusterStatus({});
  return s.queues.find((q) => q.name === queue);
}

/** Watches a task from its first event to its terminal one (WatchTask replays history first). */
async function history(c: GatewayClients, id: string): Promise<TaskEvent[]> {
  const out: TaskEvent[] = [];
  for await (const ev of c.tasks.watchTask({ taskId: id })) out.push(ev);
  return out;
}

interface Change {
  to: TaskStatus;
  attempt: number;
  time: number;
  error: TaskError | undefined;
  task: Task | undefined;
}

function statusChanges(events: TaskEvent[]): Change[] {
  return events.flatMap((e) =>
    e.event.case === "statusChange"
      ? [{ to: e.event.value.to, attempt: e.event.value.attempt, time: ms(e.time), error: e.event.value.error, task: e.task }]
      : [],
  );
}

/** The gRPC code a call fails with, or undefined when it succeeds. */
async function codeOf(call: Promise<unknown>): Promise<Code | undefined> {
  return call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e).code,
  );
}

const TERMINAL = new Set([TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED]);

/** Cancels whichever of `ids` are not finished and waits until all are (test cleanup). */
async function settle(c: GatewayClients, ids: readonly string[]): Promise<void> {
  for (const id of ids) {
    const t = await c.tasks.getTask({ taskId: id }).catch(() => undefined);
    if (t !== undefined && !TERMINAL.has(t.status)) await c.tasks.cancelTask({ taskId: id, reason: "test cleanup" }).catch(() => undefined);
  }
  await waitTerminal(c.tasks, [...ids], 15_000);
}

/** Pacing of a load generator (not synchronisation: nothing waits on what happens meanwhile). */
function pace(msDelay: number): Promise<void> {
  return new Promise((r) => setTimeout(r, msDelay));
}

/** The largest number of [start, end) intervals that overlap at any instant. */
function maxOverlap(intervals: readonly [number, number][]): number {
  // Ends sort before starts at the same instant: a task claimed in the millisecond its
  // predecessor finished did not run alongside it.
  const points = intervals.flatMap(([s, e]) => [
    [s, 1],
    [e, -1],
  ]) as [number, number][];
  points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cur = 0;
  let max = 0;
  for (const [, d] of points) {
    cur += d;
    max = Math.max(max, cur);
  }
  return max;
}

// ---- 1. priorities and aging ---------------------------------------------------------------

describe("priorities: LOW < NORMAL < HIGH < CRITICAL, FIFO within a level, and aging", () => {
  it("starts a paused queue's mix in priority order, FIFO within each level, once resumed (one worker, one slot)", async () => {
    const { c } = solo;
    const queue = queueName("prio");
    const paused = await c.cluster.pauseQueue({ queue });
    expect(paused.paused).toBe(true);
    const mix = [
      Priority.LOW,
      Priority.NORMAL,
      Priority.HIGH,
      Priority.CRITICAL,
      Priority.LOW,
      Priority.HIGH,
      Priority.UNSPECIFIED, // counts as NORMAL
      Priority.CRITICAL,
      Priority.NORMAL,
      Priority.LOW,
      Priority.HIGH,
      Priority.CRITICAL,
    ];
    // One call: every task gets the same enqueue time, so aging plays no part in this order.
    const sub = await c.tasks.submitTasks({
      tasks: mix.map((priority, i) => ({ type: "stamp", queue, priority, payload: { ms: 20, i } })),
    });
    const ids = sub.tasks.map((t) => t.id);
    for (const t of sub.tasks) expect(t.status).toBe(TaskStatus.QUEUED);
    const st = await queueStats(c, queue);
    expect(st?.paused).toBe(true);
    expect(st?.queued).toBe(BigInt(mix.length));

    const resumed = await c.cluster.resumeQueue({ queue });
    expect(resumed.paused).toBe(false);
    const done = await waitTerminal(c.tasks, ids, 20_000);
    for (const t of done) expect(t.status, JSON.stringify(t.error)).toBe(TaskStatus.SUCCEEDED);

    const level = (p: Priority): number => (p === Priority.UNSPECIFIED ? Priority.NORMAL : p);
    // Stable sort: FIFO (submission order) inside a level.
    const expected = mix.map((p, i) => ({ p: level(p), i })).sort((a, b) => b.p - a.p || a.i - b.i).map((x) => x.i);
    // Start order as the one-slot worker saw it (its per-process counter) …
    const byCounter = done.map((t, i) => ({ i, n: Number(t.result?.["n"]) })).sort((a, b) => a.n - b.n).map((x) => x.i);
    expect(byCounter).toEqual(expected);
    // … and as the scheduler recorded it: started_at never goes backwards along that order, and
    // with one slot each task starts only after the one before it finished.
    for (let k = 1; k < expected.length; k++) {
      const prev = done[expected[k - 1] as number] as Task;
      const cur = done[expected[k] as number] as Task;
      expect(ms(cur.startedAt)).toBeGreaterThanOrEqual(ms(prev.finishedAt));
    }
  });

  it(`lets a LOW task overtake a steady flood of HIGH ones after 2 levels × ${AGING_MS} ms of waiting`, async () => {
    const { c, mesh } = solo;
    const queue = queueName("aging");
    const high: string[] = [];
    let low: Task | undefined;
    let stop = false;
    let floodError: unknown;
    // The flood keeps 4–6 HIGH tasks (40 ms each) queued on the one-slot worker at all times,
    // bounded to 8 s. Without aging, a LOW task would never start while it runs.
    const floodEnd = Date.now() + 8000;
    const flood = (async () => {
      try {
        while (!stop && Date.now() < floodEnd) {
          const queued = Number((await queueStats(c, queue))?.queued ?? 0n);
          if (queued < 4) {
            const r = await c.tasks.submitTasks({
              tasks: Array.from({ length: 6 - queued }, () => ({ type: "stamp", queue, priority: Priority.HIGH, payload: { ms: 40 } })),
            });
            high.push(...r.tasks.map((t) => t.id));
          }
          await pace(15);
        }
      } catch (err) {
        floodError = err;
      }
    })();
    try {
      // The flood is established: a backlog is waiting and HIGH tasks have been running a while.
      await waitFor(async () => high.length >= 15 && Number((await queueStats(c, queue))?.queued ?? 0n) >= 3, {
        timeoutMs: 10_000,
        what: "HIGH flood established",
      });
      low = await c.tasks.submitTask({ type: "stamp", queue, priority: Priority.LOW, payload: { ms: 0 } });
      const lowId = low.id;
      await waitFor(async () => (await status(c, lowId)) !== TaskStatus.QUEUED, { timeoutMs: 5000, what: "LOW task started" });
    } finally {
      stop = true;
      await flood;
    }
    expect(floodError).toBeUndefined();
    await settle(c, [...high, low.id]);
    const l = await c.tasks.getTask({ taskId: low.id });
    const hs = await Promise.all(high.map((id) => c.tasks.getTask({ taskId: id })));
    expect(l.status).toBe(TaskStatus.SUCCEEDED);
    expect(l.workerId).toBe(mesh.workers[0]?.name);

    const created = ms(l.createdAt);
    const started = ms(l.startedAt);
    const agingWindow = (Priority.HIGH - Priority.LOW) * AGING_MS; // 400 ms
    // The documented rule (task-store.ts readyScore): a HIGH task goes before the LOW one iff it
    // was enqueued less than 2 × AGING_MS after it. So the LOW task waits for the backlog it found
    // (≤ 6 × 40 ms here) plus at most 400 ms of HIGH arrivals (≈ 400 ms of work, since the flood
    // only tops up what the worker consumes), plus dispatch. Bound: 2 × 400 ms + 1 s, the factor
    // and the second being slack for a loaded 2-core machine.
    expect(started - created).toBeLessThanOrEqual(2 * agingWindow + 1000);
    const startedBefore = hs.filter((h) => h.startedAt !== undefined && ms(h.startedAt) < started);
    for (const h of startedBefore) expect(ms(h.createdAt), "a HIGH task enqueued 400 ms after the LOW one went first").toBeLessThan(created + agingWindow);
    // Priority still counted: HIGH tasks that arrived after the LOW one went first …
    expect(startedBefore.some((h) => ms(h.createdAt) > created)).toBe(true);
    // … and every HIGH task enqueued before both the LOW one's 400 ms and its start went first.
    for (const h of hs) {
      if (ms(h.createdAt) < Math.min(created + agingWindow, started) && h.startedAt !== undefined) {
        expect(ms(h.startedAt), `HIGH ${h.id} enqueued ${ms(h.createdAt) - created} ms after LOW`).toBeLessThan(started);
      }
    }
    // The flood was still going when the LOW task overtook it: HIGH tasks enqueued before the LOW
    // one started were still waiting (they started after it, or were cancelled by the cleanup).
    const overtaken = hs.filter((h) => ms(h.createdAt) < started && (h.startedAt === undefined || ms(h.startedAt) > started));
    expect(overtaken.length).toBeGreaterThan(0);
  });
});

// ---- 2. delayed tasks ----------------------------------------------------------------------

describe("delayed tasks: delay and run_at", () => {
  it("holds a task DELAYED until its time, then starts it within 1 s (delay and run_at)", async () => {
    const { c } = pool;
    const queue = queueName("delayed");
    const byDelay = await c.tasks.submitTask({ type: "noop", queue, delay: durationFromMs(800) });
    const runAt = Date.now() + 1200;
    const byRunAt = await c.tasks.submitTask({ type: "noop", queue, runAt: timestampFromMs(runAt) });
    for (const t of [byDelay, byRunAt]) {
      expect(t.status).toBe(TaskStatus.DELAYED);
      expect(t.scheduledAt).toBeDefined();
    }
    expect(ms(byDelay.scheduledAt) - ms(byDelay.createdAt)).toBe(800);
    expect(ms(byRunAt.scheduledAt)).toBe(runAt);
    // Still waiting right after submission.
    expect(await status(c, byDelay.id)).toBe(TaskStatus.DELAYED);
    expect(await status(c, byRunAt.id)).toBe(TaskStatus.DELAYED);

    const done = await waitTerminal(c.tasks, [byDelay.id, byRunAt.id], 10_000);
    for (const [i, t] of done.entries()) {
      const scheduled = i === 0 ? ms(byDelay.scheduledAt) : runAt;
      expect(t.status).toBe(TaskStatus.SUCCEEDED);
      expect(t.attempt).toBe(1);
      expect(ms(t.startedAt)).toBeGreaterThanOrEqual(scheduled - 1);
      expect(ms(t.startedAt) - scheduled).toBeLessThan(1000);
    }
  });
});

// ---- 3. retries ----------------------------------------------------------------------------

describe("retries with exponential backoff", () => {
  it("retries a retryable failure after the backoff (RETRY_WAIT with a future scheduled_at) and succeeds at attempt 3", async () => {
    const { c } = pool;
    const queue = queueName("retry");
    const initial = 200;
    const multiplier = 2;
    const t = await c.tasks.submitTask({
      type: "flaky",
      queue,
      payload: { succeed_at: 3 },
      maxAttempts: 3,
      backoff: { initial: durationFromMs(initial), max: durationFromMs(10_000), multiplier, jitter: 0 },
    });
    const events = await history(c, t.id);
    const final = events.at(-1)?.task;
    expect(final?.status).toBe(TaskStatus.SUCCEEDED);
    expect(final?.attempt).toBe(3);
    expect(final?.result).toEqual({ attempt: 3 });

    const changes = statusChanges(events);
    expect(changes.map((ch) => TaskStatus[ch.to])).toEqual(
      ["QUEUED", "RUNNING", "RETRY_WAIT", "QUEUED", "RUNNING", "RETRY_WAIT", "QUEUED", "RUNNING", "SUCCEEDED"],
    );
    const waits = changes.filter((ch) => ch.to === TaskStatus.RETRY_WAIT);
    const runs = changes.filter((ch) => ch.to === TaskStatus.RUNNING);
    expect(runs.map((r) => r.attempt)).toEqual([1, 2, 3]);
    for (const [i, w] of waits.entries()) {
      expect(w.task?.status).toBe(TaskStatus.RETRY_WAIT);
      expect(w.error?.code).toBe("FLAKY");
      expect(w.error?.retryable).toBe(true);
      const scheduled = ms(w.task?.scheduledAt);
      // In the future when the task entered RETRY_WAIT: that is the next attempt's time.
      expect(scheduled).toBeGreaterThan(w.time);
      const next = runs[i + 1] as Change;
      // The next attempt starts no earlier than its scheduled time, and soon after it.
      expect(next.time).toBeGreaterThanOrEqual(scheduled);
      expect(next.time - scheduled).toBeLessThan(1000);
      // With jitter 0 the delay is exactly initial × multiplier^(attempt−1): 200 ms, then 400 ms.
      // (Soft: the other checks still run and report when this one fails.)
      expect.soft(scheduled - w.time, `retry delay after attempt ${i + 1} (jitter 0 requested)`).toBe(initial * multiplier ** i);
    }
    // The policy as the task reports it is the one asked for.
    expect.soft(t.backoff?.jitter, "backoff.jitter of the submitted task (0 requested)").toBe(0);
    expect(t.backoff?.multiplier).toBe(multiplier);
    expect(dur(t.backoff?.initial)).toBe(initial);
  });

  it("fails a non-retryable failure at attempt 1, without retrying", async () => {
    const { c } = pool;
    const t = await c.tasks.submitTask({
      type: "fail",
      queue: queueName("retry"),
      payload: { message: "permanent", retryable: false },
      maxAttempts: 3,
      backoff: { initial: durationFromMs(50) },
    });
    const [done] = await waitTerminal(c.tasks, [t.id], 10_000);
    expect(done?.status).toBe(TaskStatus.FAILED);
    expect(done?.attempt).toBe(1);
    expect(done?.error).toMatchObject({ code: "HANDLER_ERROR", message: "permanent", retryable: false });
    const changes = statusChanges(await history(c, t.id));
    expect(changes.map((ch) => TaskStatus[ch.to])).toEqual(["QUEUED", "RUNNING", "FAILED"]);
  });

  it("fails a retryable failure at max_attempts once the attempts are used up", async () => {
    const { c } = pool;
    const t = await c.tasks.submitTask({
      type: "flaky",
      queue: queueName("retry"),
      payload: { succeed_at: 99 },
      maxAttempts: 3,
      backoff: { initial: durationFromMs(50), multiplier: 1 },
    });
    const [done] = await waitTerminal(c.tasks, [t.id], 10_000);
    expect(done?.status).toBe(TaskStatus.FAILED);
    expect(done?.attempt).toBe(3);
    expect(done?.error).toMatchObject({ code: "FLAKY", retryable: true });
    const changes = statusChanges(await history(c, t.id));
    expect(changes.filter((ch) => ch.to === TaskStatus.RUNNING).map((ch) => ch.attempt)).toEqual([1, 2, 3]);
    expect(changes.filter((ch) => ch.to === TaskStatus.RETRY_WAIT)).toHaveLength(2);
  });
});

// ---- 4. timeouts ---------------------------------------------------------------------------

describe("timeouts that really stop work", () => {
  it("fails an attempt with TIMEOUT at its timeout when the handler honours the signal, then retries it per policy", async () => {
    const { c } = pool;
    const t = await c.tasks.submitTask({
      type: "sleep",
      queue: queueName("timeout"),
      payload: { ms: 10_000 },
      timeout: durationFromMs(300),
      maxAttempts: 2,
      backoff: { initial: durationFromMs(100) },
    });
    const events = await history(c, t.id);
    const final = events.at(-1)?.task;
    expect(final?.status).toBe(TaskStatus.FAILED);
    expect(final?.attempt).toBe(2);
    expect(final?.error).toMatchObject({ code: "TIMEOUT", retryable: true });
    const changes = statusChanges(events);
    expect(changes.map((ch) => TaskStatus[ch.to])).toEqual(["QUEUED", "RUNNING", "RETRY_WAIT", "QUEUED", "RUNNING", "FAILED"]);
    const runs = changes.filter((ch) => ch.to === TaskStatus.RUNNING);
    const ends = changes.filter((ch) => ch.to === TaskStatus.RETRY_WAIT || ch.to === TaskStatus.FAILED);
    for (const [i, end] of ends.entries()) {
      expect(end.error?.code).toBe("TIMEOUT");
      // Stopped at the deadline: well before the 10 s sleep, and before the 2 s abort grace.
      const took = end.time - (runs[i] as Change).time;
      // (20 ms of tolerance: timers run on the event loop's cached clock.)
      expect(took).toBeGreaterThanOrEqual(300 - 20);
      expect(took).toBeLessThan(300 + 1000);
    }
  });

  it("ends a handler that ignores its signal FAILED TIMEOUT at deadline + 2 s grace, frees its slot, and rejects its late result", async () => {
    const { c, mesh } = solo;
    const queue = queueName("stubborn");
    const marker = join(tmpdir(), `${uniquePrefix("stubborn")}.done`);
    try {
      const stubborn = await c.tasks.submitTask({
        type: "stubborn",
        queue,
        payload: { ms: 4000, marker },
        timeout: durationFromMs(300),
        maxAttempts: 1,
      });
      const running = await waitStatus(c, stubborn.id, TaskStatus.RUNNING);
      // The only slot is taken: this one waits until the stubborn attempt is given up.
      const follower = await c.tasks.submitTask({ type: "stamp", queue, payload: { ms: 0 } });
      expect(follower.status).toBe(TaskStatus.QUEUED);

      const [failed] = await waitTerminal(c.tasks, [stubborn.id], 10_000);
      expect(failed?.status).toBe(TaskStatus.FAILED);
      expect(failed?.attempt).toBe(1);
      expect(failed?.error).toMatchObject({ code: "TIMEOUT" });
      const took = ms(failed?.finishedAt) - ms(running.startedAt);
      expect(took).toBeGreaterThanOrEqual(300 + 2000 - 20);
      expect(took).toBeLessThan(300 + 2000 + 1000);

      const [f] = await waitTerminal(c.tasks, [follower.id], 10_000);
      expect(f?.status).toBe(TaskStatus.SUCCEEDED);
      expect(f?.workerId).toBe(mesh.workers[0]?.name);
      expect(f?.workerId).toBe(running.workerId);
      // Started on the same one-slot worker while the stubborn handler was still sleeping.
      expect(ms(f?.startedAt)).toBeLessThan(ms(running.startedAt) + 4000);

      // The stubborn handler returns at last …
      const returnedAt = await waitFor(async () => Number(await readFile(marker, "utf8")) || undefined, {
        timeoutMs: 8000,
        what: "the stubborn handler to return",
      });
      expect(ms(f?.startedAt)).toBeLessThan(returnedAt);
      // … and anything it reported went over the worker's stream before this task's result did.
      const barrier = await c.tasks.submitTask({ type: "stamp", queue, payload: { ms: 0 } });
      const [b] = await waitTerminal(c.tasks, [barrier.id], 10_000);
      expect(b?.status).toBe(TaskStatus.SUCCEEDED);

      const after = await c.tasks.getTask({ taskId: stubborn.id });
      expect(after.status).toBe(TaskStatus.FAILED);
      expect(after.error?.code).toBe("TIMEOUT");
      expect(after.attempt).toBe(1);
      expect(after.result).toBeUndefined();
      expect(ms(after.finishedAt)).toBe(ms(failed?.finishedAt));
      const changes = statusChanges(await history(c, stubborn.id));
      expect(changes.map((ch) => TaskStatus[ch.to])).toEqual(["QUEUED", "RUNNING", "FAILED"]);
    } finally {
      await rm(marker, { force: true });
    }
  });
});

// ---- 5. cancellation -----------------------------------------------------------------------

describe("cancellation", () => {
  it("cancels QUEUED (paused queue), DELAYED and RETRY_WAIT tasks at once: CancelTask already answers CANCELLED", async () => {
    const { c } = pool;
    const queue = queueName("cancel");
    await c.cluster.pauseQueue({ queue });
    const queued = await c.tasks.submitTask({ type: "noop", queue });
    expect(queued.status).toBe(TaskStatus.QUEUED);
    const delayed = await c.tasks.submitTask({ type: "noop", queue: queueName("cancel"), delay: durationFromMs(60_000) });
    expect(delayed.status).toBe(TaskStatus.DELAYED);
    const retrying = await c.tasks.submitTask({
      type: "flaky",
      queue: queueName("cancel"),
      payload: { succeed_at: 5 },
      maxAttempts: 5,
      backoff: { initial: durationFromMs(60_000) },
    });
    const waiting = await waitStatus(c, retrying.id, TaskStatus.RETRY_WAIT);
    expect(ms(waiting.scheduledAt)).toBeGreaterThan(Date.now());

    for (const t of [queued, delayed, retrying]) {
      const r = await c.tasks.cancelTask({ taskId: t.id, reason: "not needed" });
      expect(r.status, TaskStatus[t.status]).toBe(TaskStatus.CANCELLED);
      expect(r.error).toMatchObject({ code: "CANCELLED", message: "not needed", retryable: false });
      expect(r.finishedAt).toBeDefined();
      expect(await status(c, t.id)).toBe(TaskStatus.CANCELLED);
    }
    expect((await c.tasks.getTask({ taskId: retrying.id })).attempt).toBe(1);

    // Resumed, the queue runs new work but never the cancelled task.
    await c.cluster.resumeQueue({ queue });
    const later = await c.tasks.submitTask({ type: "noop", queue });
    const [l] = await waitTerminal(c.tasks, [later.id], 10_000);
    expect(l?.status).toBe(TaskStatus.SUCCEEDED);
    const q = await c.tasks.getTask({ taskId: queued.id });
    expect(q.status).toBe(TaskStatus.CANCELLED);
    expect(q.attempt).toBe(0);
    expect(q.startedAt).toBeUndefined();
  });

  it("ends a RUNNING task CANCELLED within 1 s and frees its worker slot", async () => {
    const { c, mesh } = solo;
    const queue = queueName("cancel-run");
    const t = await c.tasks.submitTask({ type: "sleep", queue, payload: { ms: 10_000 } });
    const running = await waitStatus(c, t.id, TaskStatus.RUNNING);
    const askedAt = Date.now();
    const r = await c.tasks.cancelTask({ taskId: t.id, reason: "stop it" });
    expect([TaskStatus.RUNNING, TaskStatus.CANCELLED]).toContain(r.status);
    const cancelled = await waitStatus(c, t.id, TaskStatus.CANCELLED, 5000);
    expect(ms(cancelled.finishedAt) - askedAt).toBeLessThan(1000);
    expect(cancelled.attempt).toBe(1);
    expect(cancelled.error).toMatchObject({ code: "CANCELLED", message: "stop it" });

    // The worker's only slot is free again: the next task runs there at once.
    const submittedAt = Date.now();
    const next = await c.tasks.submitTask({ type: "stamp", queue, payload: { ms: 0 } });
    const [n] = await waitTerminal(c.tasks, [next.id], 5000);
    expect(n?.status).toBe(TaskStatus.SUCCEEDED);
    expect(n?.workerId).toBe(running.workerId);
    expect(n?.workerId).toBe(mesh.workers[0]?.name);
    expect(ms(n?.startedAt) - submittedAt).toBeLessThan(1000);
  });

  it("returns a finished task unchanged", async () => {
    const { c } = pool;
    const t = await c.tasks.submitTask({ type: "noop", queue: queueName("cancel") });
    const [done] = await waitTerminal(c.tasks, [t.id], 10_000);
    expect(done?.status).toBe(TaskStatus.SUCCEEDED);
    const r = await c.tasks.cancelTask({ taskId: t.id, reason: "too late" });
    expect(r).toEqual(done);
    expect(await c.tasks.getTask({ taskId: t.id })).toEqual(done);
  });
});

// ---- 6. dead letters, RetryTask, result TTL -----------------------------------------------

describe("dead letters and RetryTask", () => {
  it("lists a FAILED task as dead-lettered; RetryTask re-queues it and it runs again with the next attempt", async () => {
    const { c } = pool;
    const queue = queueName("dlq");
    // Fails for good at attempt 1; would succeed at attempt 2.
    const t = await c.tasks.submitTask({ type: "flaky", queue, payload: { succeed_at: 2, retryable: false }, maxAttempts: 3 });
    const [failed] = await waitTerminal(c.tasks, [t.id], 10_000);
    expect(failed?.status).toBe(TaskStatus.FAILED);
    expect(failed?.attempt).toBe(1);
    expect(failed?.error?.retryable).toBe(false);

    const listed = await c.tasks.listTasks({ status: TaskStatus.FAILED, queue, pageSize: 100 });
    expect(listed.tasks.map((x) => x.id)).toContain(t.id);
    for (const x of listed.tasks) expect(x.status).toBe(TaskStatus.FAILED);
    expect((await queueStats(c, queue))?.dead).toBe(1n);

    const retried = await c.tasks.retryTask({ taskId: t.id });
    expect(retried.id).toBe(t.id);
    expect(retried.status).toBe(TaskStatus.QUEUED);
    const [again] = await waitTerminal(c.tasks, [t.id], 10_000);
    expect(again?.status).toBe(TaskStatus.SUCCEEDED);
    expect(again?.attempt).toBe(2);
    expect(again?.result).toEqual({ attempt: 2 });
    const after = await c.tasks.listTasks({ status: TaskStatus.FAILED, queue, pageSize: 100 });
    expect(after.tasks.map((x) => x.id)).not.toContain(t.id);
    expect((await queueStats(c, queue))?.dead).toBe(0n);
  });

  it("refuses RetryTask on a SUCCEEDED task with FAILED_PRECONDITION", async () => {
    const { c } = pool;
    const t = await c.tasks.submitTask({ type: "noop", queue: queueName("dlq") });
    const [done] = await waitTerminal(c.tasks, [t.id], 10_000);
    expect(done?.status).toBe(TaskStatus.SUCCEEDED);
    expect(await codeOf(c.tasks.retryTask({ taskId: t.id }))).toBe(Code.FailedPrecondition);
    expect(await c.tasks.getTask({ taskId: t.id })).toEqual(done);
  });
});

describe("result TTL: Redis memory stays bounded", () => {
  it("deletes finished tasks 1–3 s after their 1 s result TTL, leaving only queue-level keys in Redis", async () => {
    const { c, mesh } = ttl;
    const queue = queueName("ttl");
    const resultTtl = durationFromMs(1000);
    const ok = await c.tasks.submitTasks({ tasks: Array.from({ length: 5 }, () => ({ type: "noop", queue, resultTtl })) });
    const failed = await c.tasks.submitTask({ type: "fail", queue, payload: { retryable: false }, resultTtl });
    const delayed = await c.tasks.submitTask({ type: "noop", queue, delay: durationFromMs(60_000), resultTtl });
    const cancelled = await c.tasks.cancelTask({ taskId: delayed.id });
    expect(cancelled.status).toBe(TaskStatus.CANCELLED);
    const ids = [...ok.tasks.map((t) => t.id), failed.id, delayed.id];
    const done = await waitTerminal(c.tasks, ids, 10_000);
    expect(done.map((t) => TaskStatus[t.status])).toEqual([...Array(5).fill("SUCCEEDED"), "FAILED", "CANCELLED"]);

    const goneAt = new Map<string, number>();
    await waitFor(
      async () => {
        for (const id of ids) {
          if (goneAt.has(id)) continue;
          if ((await codeOf(c.tasks.getTask({ taskId: id }))) === Code.NotFound) goneAt.set(id, Date.now());
        }
        return goneAt.size === ids.length;
      },
      { timeoutMs: 8000, intervalMs: 50, what: "finished tasks expired" },
    );
    for (const t of done) {
      const after = (goneAt.get(t.id) as number) - ms(t.finishedAt);
      expect(after, `${TaskStatus[t.status]} task gone ${after} ms after finishing`).toBeGreaterThanOrEqual(1000);
      expect(after, `${TaskStatus[t.status]} task gone ${after} ms after finishing`).toBeLessThanOrEqual(3000);
    }
    expect((await c.tasks.listTasks({ pageSize: 100 })).tasks).toEqual([]);
    expect(await codeOf(c.tasks.retryTask({ taskId: failed.id }))).toBe(Code.NotFound);

    const redis = new Redis(inject("redisUrl"), { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      const keys: string[] = [];
      let cursor = "0";
      for (let i = 0; i < 1000; i++) {
        const [next, batch] = await redis.scan(cursor, "MATCH", `${mesh.redisPrefix}:*`, "COUNT", 1000);
        keys.push(...batch);
        cursor = next;
        if (cursor === "0") break;
      }
      expect(cursor).toBe("0");
      const p = mesh.redisPrefix;
      const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      const queueLevel = new RegExp(`^${esc(p)}:\\{[^}]+\\}:(ready:[1-4](:[A-Za-z0-9_.-]+)?|lanes|delayed|running|done|dead|rw|cc|paused|epoch)$`);
      // (The leader's indexes: docs/fairness.md.)
      const global = new Set([`${p}:queues`, `${p}:wstat`, `${p}:sch:due`, `${p}:sch:pend`, `${p}:ready`, `${p}:due`, `${p}:lease`, `${p}:reap`]);
      // Per API key (the gateway's rate-limit buckets, which expire), not per task.
      const perKey = (k: string): boolean => k.startsWith(`${p}:rl:`);
      const perTask = keys.filter((k) => !(queueLevel.test(k) || global.has(k) || perKey(k)) || ids.some((id) => k.includes(id)));
      expect(perTask, `keys left under ${p}: ${JSON.stringify(keys.sort())}`).toEqual([]);
      for (const k of [`${p}:ix`, `${p}:tn:default`]) expect(keys).not.toContain(k);
      // Nothing of the queue's is left waiting, running, done or dead.
      for (const set of ["ready:1", "ready:2", "ready:3", "ready:4", "ready:2:default", "lanes", "delayed", "running", "done", "dead"]) {
        expect(keys).not.toContain(`${p}:{${queue}}:${set}`);
      }
      expect(keys).not.toContain(`${p}:tq:default`);
    } finally {
      redis.disconnect();
    }
  });
});

// ---- 7. idempotency keys -------------------------------------------------------------------

describe("idempotency keys", () => {
  it("returns the first task for a repeated idempotency_key and creates distinct tasks for distinct keys", async () => {
    const { c } = pool;
    const queue = queueName("idem");
    const key = uniquePrefix("idem");
    const first = await c.tasks.submitTask({ type: "sleep", queue, payload: { ms: 50 }, idempotencyKey: key });
    const second = await c.tasks.submitTask({ type: "sleep", queue, payload: { ms: 50 }, idempotencyKey: key });
    expect(second.id).toBe(first.id);
    expect(ms(second.createdAt)).toBe(ms(first.createdAt));
    const other = await c.tasks.submitTask({ type: "sleep", queue, payload: { ms: 50 }, idempotencyKey: `${key}-b` });
    expect(other.id).not.toBe(first.id);
    const batch = await c.tasks.submitTasks({
      tasks: [
        { type: "noop", queue, idempotencyKey: key },
        { type: "noop", queue, idempotencyKey: `${key}-c` },
      ],
    });
    expect(batch.tasks[0]?.id).toBe(first.id);
    expect(batch.tasks[1]?.id).not.toBe(first.id);
    expect(batch.tasks[1]?.id).not.toBe(other.id);

    const done = await waitTerminal(c.tasks, [first.id, other.id, batch.tasks[1]?.id as string], 10_000);
    for (const t of done) expect(t.status).toBe(TaskStatus.SUCCEEDED);
    // Once finished, the same key still returns the first task, with its result: it never ran twice.
    const third = await c.tasks.submitTask({ type: "sleep", queue, payload: { ms: 50 }, idempotencyKey: key });
    expect(third.id).toBe(first.id);
    expect(third.status).toBe(TaskStatus.SUCCEEDED);
    expect(third.attempt).toBe(1);
    expect(third.result).toEqual({ slept_ms: 50 });
    const listed = await c.tasks.listTasks({ queue, pageSize: 100 });
    expect(listed.tasks).toHaveLength(3);
  });
});

// ---- 8. per-key concurrency and per-queue pause --------------------------------------------

describe("per-key concurrency limits and per-queue pause/resume", () => {
  it("never runs more than concurrency_limit tasks of one concurrency_key at once", async () => {
    const { c } = pool;
    const queue = queueName("cc");
    const key = uniquePrefix("k");
    const sub = await c.tasks.submitTasks({
      tasks: Array.from({ length: 8 }, () => ({ type: "sleep", queue, payload: { ms: 300 }, concurrencyKey: key, concurrencyLimit: 2 })),
    });
    const done = await waitTerminal(c.tasks, sub.tasks.map((t) => t.id), 20_000);
    for (const t of done) {
      expect(t.status).toBe(TaskStatus.SUCCEEDED);
      expect(t.attempt).toBe(1);
    }
    const intervals = done.map((t) => [ms(t.startedAt), ms(t.finishedAt)] as [number, number]);
    // 16 free slots, yet at most 2 at a time — and the limit is used, not undercut.
    expect(maxOverlap(intervals)).toBe(2);
    const span = Math.max(...intervals.map((i) => i[1])) - Math.min(...intervals.map((i) => i[0]));
    expect(span).toBeGreaterThanOrEqual(4 * 300);
  });

  it("keeps a paused queue's tasks QUEUED while another queue runs, and runs them once resumed", async () => {
    const { c } = pool;
    const paused = queueName("paused");
    const other = queueName("other");
    const p = await c.cluster.pauseQueue({ queue: paused });
    expect(p).toMatchObject({ name: paused, paused: true });
    const held = await c.tasks.submitTasks({ tasks: Array.from({ length: 3 }, () => ({ type: "noop", queue: paused })) });
    const free = await c.tasks.submitTasks({ tasks: Array.from({ length: 3 }, () => ({ type: "noop", queue: other })) });
    const ran = await waitTerminal(c.tasks, free.tasks.map((t) => t.id), 10_000);
    for (const t of ran) expect(t.status).toBe(TaskStatus.SUCCEEDED);
    for (const t of held.tasks) expect(await status(c, t.id)).toBe(TaskStatus.QUEUED);
    const st = await queueStats(c, paused);
    expect(st).toMatchObject({ paused: true, queued: 3n, running: 0n });
    expect((await queueStats(c, other))?.paused).toBe(false);

    const r = await c.cluster.resumeQueue({ queue: paused });
    expect(r).toMatchObject({ name: paused, paused: false });
    const done = await waitTerminal(c.tasks, held.tasks.map((t) => t.id), 10_000);
    for (const t of done) expect(t.status).toBe(TaskStatus.SUCCEEDED);
    expect(await queueStats(c, paused)).toMatchObject({ paused: false, queued: 0n });
  });
});

// ---- 9. autoscaling signals ----------------------------------------------------------------

describe("autoscaling signals: GetClusterStatus queue depths", () => {
  it("reports queued, running, delayed, retry_wait and dead counts, and an oldest_queued_age that grows while paused", async () => {
    const { c } = pool;
    const queue = queueName("scale");
    const ids: string[] = [];
    try {
      // Before pausing: one task failed for good (dead), one waiting to retry, one running.
      const dead = await c.tasks.submitTask({ type: "fail", queue, payload: { retryable: false } });
      ids.push(dead.id);
      const retrying = await c.tasks.submitTask({
        type: "flaky",
        queue,
        payload: { succeed_at: 5 },
        maxAttempts: 5,
        backoff: { initial: durationFromMs(60_000) },
      });
      ids.push(retrying.id);
      const running = await c.tasks.submitTask({ type: "sleep", queue, payload: { ms: 30_000 } });
      ids.push(running.id);
      await waitTerminal(c.tasks, [dead.id], 10_000);
      await waitStatus(c, retrying.id, TaskStatus.RETRY_WAIT);
      await waitStatus(c, running.id, TaskStatus.RUNNING);

      await c.cluster.pauseQueue({ queue });
      const queued = await c.tasks.submitTasks({ tasks: Array.from({ length: 3 }, () => ({ type: "noop", queue })) });
      const delayed = await c.tasks.submitTasks({
        tasks: Array.from({ length: 2 }, () => ({ type: "noop", queue, delay: durationFromMs(60_000) })),
      });
      ids.push(...queued.tasks.map((t) => t.id), ...delayed.tasks.map((t) => t.id));

      const first = await queueStats(c, queue);
      expect(first).toMatchObject({ name: queue, paused: true, queued: 3n, running: 1n, delayed: 2n, retryWait: 1n, dead: 1n });
      const age1 = dur(first?.oldestQueuedAge);
      expect(age1).toBeGreaterThanOrEqual(0);
      const submittedAgo = Date.now() - ms(queued.tasks[0]?.createdAt);
      expect(age1).toBeLessThanOrEqual(submittedAgo + 50);
      // The age keeps growing while nothing is taken from the paused queue.
      const later = await waitFor(
        async () => {
          const s = await queueStats(c, queue);
          return dur(s?.oldestQueuedAge) >= age1 + 300 ? s : undefined;
        },
        { timeoutMs: 5000, intervalMs: 50, what: "oldest_queued_age to grow" },
      );
      expect(later).toMatchObject({ queued: 3n, running: 1n, delayed: 2n, retryWait: 1n, dead: 1n });

      // Resumed: the queued ones run, and the depths follow.
      await c.cluster.resumeQueue({ queue });
      await waitTerminal(c.tasks, queued.tasks.map((t) => t.id), 10_000);
      const resumed = await queueStats(c, queue);
      expect(resumed).toMatchObject({ paused: false, queued: 0n, running: 1n, delayed: 2n, retryWait: 1n, dead: 1n });
      expect(resumed?.oldestQueuedAge).toBeUndefined();
    } finally {
      await settle(c, ids);
    }
  });
});
