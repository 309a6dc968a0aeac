import type { Logger } from "pino";
import type { Ring } from "./ring.js";
import type { ClaimedTask, TaskStore } from "./task-store.js";
import type { WorkerSession } from "./worker-session.js";
import type { SchedulerMetrics } from "../../lib/metrics.js";

/** Options for {@link Dispatcher}. */
export interface DispatcherOptions {
  store: TaskStore;
  ring: Ring;
  /** The leader's live sessions by worker id. */
  sessions: ReadonlyMap<string, WorkerSession>;
  /** Lease of a claimed attempt (read at each round: it is live config). */
  leaseMs: () => number;
  /** Most tasks claimed per Lua call. @default 500 */
  batchSize?: number;
  /** Idle re-check period, a safety net behind kicks. @default 250 */
  idleMs?: number;
  metrics: SchedulerMetrics;
  logger: Logger;
}

/**
 * The leader's dispatch loop. Each round: total free slots → for each queue (rotating) peek that
 * many ready tasks in order, pick a worker for each by the ring (affinity key or task id, task
 * type, bounded load, free slots), claim them in one Lua call and send each worker its share in
 * one stream message. Runs when kicked (new tasks, freed slots, new workers) and on an idle timer.
 */
export class Dispatcher {
  private running = false;
  private stopped = true;
  private kicked = false;
  private wake: (() => void) | undefined;
  private queueCursor = 0;
  private queues: string[] = [];
  private queuesReadAt = 0;
  private readonly log: Logger;
  private loop: Promise<void> | undefined;

  constructor(private readonly opts: DispatcherOptions) {
    this.log = opts.logger.child({ component: "dispatcher" });
  }

  /**
   * Asks for a dispatch round soon (coalesced). Naming the queues that got work lets a queue the
   * dispatcher has not seen yet be picked up at once instead of at the next queue-list refresh.
   */
  kick(queues?: Iterable<string>): void {
    if (queues !== undefined) {
      for (const q of queues) {
        if (!this.queues.includes(q)) {
          this.queuesReadAt = 0;
          break;
        }
      }
    }
    this.kicked = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Starts the loop (leader only). */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.stopped = false;
    this.loop = this.run();
  }

  /** Stops the loop and waits for the current round. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.kick();
    await this.loop;
    await Promise.all(this.claiming);
    this.running = false;
  }

  private async run(): Promise<void> {
    const idleMs = this.opts.idleMs ?? 250;
    while (!this.stopped) {
      this.kicked = false;
      let dispatched = 0;
      try {
        dispatched = await this.round();
      } catch (err) {
        this.log.error({ err }, "dispatch round failed");
        await new Promise((r) => setTimeout(r, 100).unref());
      }
      if (this.stopped) break;
      // Never more than a few claims in flight: each holds its reservations.
      while (this.claiming.size >= 4) await Promise.race(this.claiming);
      if (dispatched > 0 || this.kicked) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, idleMs);
        t.unref();
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  private async listQueues(now: number): Promise<string[]> {
    if (now - this.queuesReadAt > 1000 || this.queues.length === 0) {
      this.queues = await this.opts.store.queues();
      this.queuesReadAt = now;
    }
    return this.queues;
  }

  /** Claims in flight, awaited when there are too many and when stopping. */
  private readonly claiming = new Set<Promise<void>>();

  private track(p: Promise<void>): void {
    this.claiming.add(p);
    void p.finally(() => this.claiming.delete(p));
  }

  /** Claims the planned tasks, sends each worker its share, and gives back unused reservations. */
  private async finishClaim(queue: string, claims: { id: string; workerId: string }[], planned: Map<string, number>): Promise<void> {
    const { sessions, store } = this.opts;
    let claimed: ClaimedTask[] = [];
    try {
      claimed = await store.claim(queue, claims, Date.now(), this.opts.leaseMs());
    } catch (err) {
      this.log.error({ err, queue }, "claim failed");
    }
    const byWorker = new Map<string, ClaimedTask[]>();
    for (const t of claimed) {
      let list = byWorker.get(t.workerId);
      if (list === undefined) byWorker.set(t.workerId, (list = []));
      list.push(t);
    }
    for (const [workerId, n] of planned) sessions.get(workerId)?.release(n - (byWorker.get(workerId)?.length ?? 0));
    const now = Date.now();
    for (const [workerId, tasks] of byWorker) {
      const s = sessions.get(workerId);
      if (s === undefined) {
        await store.requeue(tasks.map((t) => ({ id: t.id, attempt: t.attempt })), "worker gone", now).catch((err: unknown) =>
          this.log.error({ err }, "re-queue after a lost worker failed; leases will expire"),
        );
        continue;
      }
      s.assign(tasks, true);
      for (const t of tasks) {
        this.opts.metrics.dispatched.inc({ queue: t.queue });
        if (t.readyAtMs > 0) this.opts.metrics.queueWaitSeconds.observe({ queue: t.queue }, Math.max(0, now - t.readyAtMs) / 1000);
      }
    }
    // Unused reservations are back: another round may fill them.
    if (claimed.length < claims.length) this.kick();
  }

  /** One pass over the queues; returns how many tasks were sent. */
  async round(): Promise<number> {
    const { sessions, store, ring } = this.opts;
    let free = 0;
    for (const s of sessions.values()) free += s.free;
    if (free === 0) return 0;
    const now = Date.now();
    const queues = await this.listQueues(now);
    if (queues.length === 0) return 0;
    const batch = this.opts.batchSize ?? 500;
    let sent = 0;
    const start = this.queueCursor++ % queues.length;
    for (let i = 0; i < queues.length && free > 0; i++) {
      const queue = queues[(start + i) % queues.length] as string;
      const want = Math.min(free, batch);
      // Peek a wider window than the free slots, so tasks no worker can take right now do not
      // block the ones behind them.
      const candidates = await store.peekReady(queue, Math.min(want * 4, 1000));
      if (candidates.length === 0) continue;
      const planned = new Map<string, number>();
      const load = (id: string): number => {
        const s = sessions.get(id);
        return (s === undefined ? 0 : s.inflight.size + s.reserved) + (planned.get(id) ?? 0);
      };
      const canAccept = (id: string): boolean => {
        const s = sessions.get(id);
        return s !== undefined && s.serves(queue) && s.free - (planned.get(id) ?? 0) > 0;
      };
      const claims: { id: string; workerId: string }[] = [];
      for (const c of candidates) {
        if (claims.length >= want) break;
        const workerId = ring.pick(c.affinityKey === "" ? c.id : c.affinityKey, c.type, load, canAccept);
        if (workerId === undefined) continue;
        planned.set(workerId, (planned.get(workerId) ?? 0) + 1);
        claims.push({ id: c.id, workerId });
      }
      if (claims.length === 0) continue;
      // Reserve the slots now and let the claim run without waiting for it: the next peek goes
      // down the same Redis connection after it, so it already sees these tasks claimed, and the
      // reservations keep every worker within its free slots meanwhile.
      for (const [workerId, n] of planned) sessions.get(workerId)?.reserve(n);
      this.track(this.finishClaim(queue, claims, planned));
      sent += claims.length;
      free -= claims.length;
    }
    return sent;
  }
}
