import type { Logger } from "pino";
import type { Ring } from "./ring.js";
import {
  FencedError,
  type ClaimedTask,
  type DirectClaims,
  type LeaderStamp,
  type NewTask,
  type SubmitResult,
  type TaskStore,
} from "./task-store.js";
import type { WorkerSession } from "./worker-session.js";
import type { SchedulerMetrics } from "../../lib/metrics.js";

/** A ready task as peeked. */
type Candidate = { id: string; type: string; affinityKey: string };

/** Tasks peeked ahead of the round that claims them. */
interface Ahead {
  /** `Date.now()` when peeked. */
  at: number;
  /** How many were asked for: fewer came back when the queue has no more. */
  limit: number;
  /** Undefined when the peek failed. */
  candidates: Promise<Candidate[] | undefined>;
}

/** How long tasks peeked ahead stay usable (ms). */
const AHEAD_MS = 50;
/** How often the dispatcher reads the ready index afresh (ms): a safety net behind kicks. */
const READY_REFRESH_MS = 1000;
/** Most queues one round looks into; the next round goes on where it stopped. */
const MAX_VISITS = 256;

/** A queue a round visits, on whose tenant's turn; `next`: where that tenant's rotation goes on after it. */
interface Visit {
  queue: string;
  tenant: string;
  next: number;
}

/** The key of tenant `tenant`'s lane of `queue` (lib.lua ready lists) in the dispatcher's maps. */
const laneKey = (queue: string, tenant: string): string => `${queue}\n${tenant}`;

/** Soonest a kick for work of an unknown tenant reads the ready index again (ms). */
const READY_REFRESH_MIN_MS = 100;

/** New work a kick announces: a queue, and the tenant of its tasks when known. */
export interface Work {
  queue: string;
  tenant?: string | undefined;
}

/** What a dispatch round will claim from one queue. */
interface Plan {
  claims: { id: string; workerId: string }[];
  /** Tasks per worker. */
  planned: Map<string, number>;
  /** Candidates no worker could take. */
  passed: number;
}

/** Direct claims planned for one submit (see {@link Dispatcher.planDirect}). */
export interface DirectPlan {
  claims: DirectClaims;
  /** Gets the store's answer (undefined when the call failed): sends the claimed, frees the rest. */
  settle(results: readonly SubmitResult[] | undefined): void;
}

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
  /**
   * Redis refused a claim or re-queue: a leader of a later epoch took over (stop leading), or the
   * write came after this leadership's `until` (FencedError.late: the dispatcher goes on).
   */
  onFenced: (err: FencedError) => void;
}

/**
 * The leader's dispatch loop. Each round: total free slots → visit the queues that have QUEUED
 * tasks (the ready index, lib.lua), taking turns by tenant: the tenants with waiting work in
 * rotation, each round starting one further, and for each tenant its queues in rotation; in each
 * queue peek as many ready tasks as there are free slots, pick a worker for each by the ring
 * (affinity key or task id, task type, bounded load, free slots), claim them in one Lua call and
 * send each worker its share in one stream message. So a tenant with many queues gets one turn
 * like a tenant with one (docs/fairness.md has the bound). Runs when kicked (new tasks, freed
 * slots, new workers) and on an idle timer.
 */
export class Dispatcher {
  private running = false;
  private stopped = true;
  private kicked = false;
  /** A claim was refused as late (FencedError.late): the next round waits a little. */
  private lateRefusal = false;
  private wake: (() => void) | undefined;
  /** The ready index as last read, plus what kicks added since: queue → tenants with tasks in it. */
  private ready = new Map<string, Set<string>>();
  private readyReadAt = 0;
  /** The same by tenant, in rotation order (rebuilt when `ready` changes). */
  private byTenant: { tenant: string; queues: string[] }[] = [];
  private byTenantStale = true;
  private tenantCursor = 0;
  private readonly queueCursor = new Map<string, number>();
  /** Per lane, how many kicks announced new work for it (an idle lane is dropped only if none came meanwhile). */
  private readonly kicks = new Map<string, number>();
  /**
   * The last round ran out of free slots (work may be waiting): the submit-time fast lane is off
   * until a round ends with slots to spare, so new tasks do not jump the rotation.
   */
  private backlog = false;
  private readonly log: Logger;
  private loop: Promise<void> | undefined;
  /** The leadership this loop runs for, as its claims and re-queues carry it (they are fenced by it). */
  private leader: () => LeaderStamp = () => ({ epoch: 0n, until: 0 });

  constructor(private readonly opts: DispatcherOptions) {
    this.log = opts.logger.child({ component: "dispatcher" });
  }

  /**
   * Asks for a dispatch round soon (coalesced). Naming the queues that got work (and the tenant
   * of their tasks) lets the next round visit them at once instead of after the next read of the
   * ready index. Work of an unknown tenant (re-queued attempts, a queue resumed) makes the next
   * round read the index (at most every {@link READY_REFRESH_MIN_MS}).
   */
  kick(work?: Iterable<Work>): void {
    if (work !== undefined) {
      for (const { queue, tenant } of work) {
        if (tenant === undefined) {
          // Whose lane: the ready index says, read soon.
          for (const t of this.ready.get(queue) ?? []) this.ahead.delete(laneKey(queue, t));
          this.readyReadAt = Math.min(this.readyReadAt, Date.now() - READY_REFRESH_MS + READY_REFRESH_MIN_MS);
          continue;
        }
        const lane = laneKey(queue, tenant);
        // New tasks may come before the ones peeked ahead (priority): peek afresh.
        this.ahead.delete(lane);
        this.kicks.set(lane, (this.kicks.get(lane) ?? 0) + 1);
        let tenants = this.ready.get(queue);
        if (tenants === undefined) this.ready.set(queue, (tenants = new Set()));
        if (!tenants.has(tenant)) {
          tenants.add(tenant);
          this.byTenantStale = true;
        }
      }
    }
    this.kicked = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Starts the loop for the leadership `leader` describes (leader only). */
  start(leader: () => LeaderStamp): void {
    if (this.running) return;
    this.leader = leader;
    this.running = true;
    this.stopped = false;
    this.ahead.clear();
    this.ready.clear();
    this.readyReadAt = 0;
    this.byTenantStale = true;
    this.backlog = false;
    this.loop = this.run();
  }

  /**
   * A later leader took over: no more rounds (stop() still follows), and the leader is told. A
   * write that was only late changed nothing (its tasks stay in line, its reservations are given
   * back): the leader is told, and the rounds go on unless the leadership pauses.
   */
  private fenced(err: FencedError): void {
    if (this.stopped) return;
    if (err.late) {
      // Not at once again: the next claims would be refused too until etcd confirms the lease
      // (or the leadership pauses, which stops this loop).
      this.lateRefusal = true;
      this.opts.onFenced(err);
      return;
    }
    this.stopped = true;
    this.kick();
    this.opts.onFenced(err);
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
      if (this.lateRefusal) {
        this.lateRefusal = false;
        await new Promise((r) => setTimeout(r, 100).unref());
        if (this.stopped) break;
      }
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

  /** The ready queues by tenant, read afresh when due (see {@link READY_REFRESH_MS}). */
  private async readyByTenant(now: number): Promise<{ tenant: string; queues: string[] }[]> {
    if (now - this.readyReadAt >= READY_REFRESH_MS) {
      // Kicks that come while the index is read are kept: they may be newer than what it says.
      const before = new Map(this.kicks);
      const read = await this.opts.store.readyQueues();
      for (const [lane, n] of this.kicks) {
        if (before.get(lane) === n) continue;
        const [queue = "", tenant = ""] = lane.split("\n");
        read.set(queue, [...new Set([...(read.get(queue) ?? []), tenant])]);
      }
      this.ready = new Map([...read].filter(([, ts]) => ts.length > 0).map(([q, ts]) => [q, new Set(ts)]));
      for (const lane of this.kicks.keys()) {
        const [queue = "", tenant = ""] = lane.split("\n");
        if (this.ready.get(queue)?.has(tenant) !== true) this.kicks.delete(lane);
      }
      this.readyReadAt = now;
      this.byTenantStale = true;
    }
    if (this.byTenantStale) {
      const by = new Map<string, string[]>();
      for (const [queue, tenants] of this.ready) {
        for (const t of tenants) {
          let qs = by.get(t);
          if (qs === undefined) by.set(t, (qs = []));
          qs.push(queue);
        }
      }
      this.byTenant = [...by].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([tenant, queues]) => ({ tenant, queues: queues.sort() }));
      for (const t of this.queueCursor.keys()) if (!by.has(t)) this.queueCursor.delete(t);
      this.byTenantStale = false;
    }
    return this.byTenant;
  }

  /**
   * The order one round visits lanes in: tenants take turns (starting one further each round),
   * each with its lane of its next queue in its own rotation, until every lane came up once.
   */
  private visitOrder(byTenant: readonly { tenant: string; queues: string[] }[]): Visit[] {
    const order: Visit[] = [];
    const n = byTenant.length;
    if (n === 0) return order;
    const start = this.tenantCursor++ % n;
    const next = byTenant.map(({ tenant, queues }) => ({ tenant, queues, i: 0, at: (this.queueCursor.get(tenant) ?? 0) % queues.length }));
    for (let added = true; added && order.length < MAX_VISITS; ) {
      added = false;
      for (let k = 0; k < n && order.length < MAX_VISITS; k++) {
        const t = next[(start + k) % n] as (typeof next)[number];
        if (t.i < t.queues.length) {
          const at = (t.at + t.i++) % t.queues.length;
          order.push({ queue: t.queues[at] as string, tenant: t.tenant, next: (at + 1) % t.queues.length });
          added = true;
        }
      }
    }
    return order;
  }

  /** The dispatcher found nothing to claim in a lane: drop it from the index unless new work came. */
  private async dropIdle(queue: string, tenant: string, kicksBefore: number): Promise<void> {
    const lane = laneKey(queue, tenant);
    if ((this.kicks.get(lane) ?? 0) !== kicksBefore) return;
    const left = await this.opts.store.idle(queue, tenant).catch((err: unknown) => {
      this.log.warn({ err, queue }, "could not mark a queue idle");
      return false;
    });
    if (!left || (this.kicks.get(lane) ?? 0) !== kicksBefore) return;
    const tenants = this.ready.get(queue);
    tenants?.delete(tenant);
    if (tenants?.size === 0) this.ready.delete(queue);
    this.kicks.delete(lane);
    this.wideQueues.delete(lane);
    this.byTenantStale = true;
  }

  /** Claims in flight, awaited when there are too many and when stopping. */
  private readonly claiming = new Set<Promise<void>>();

  private track(p: Promise<void>): void {
    this.claiming.add(p);
    void p.finally(() => this.claiming.delete(p));
  }

  /** Claims the planned tasks, sends each worker its share, and gives back unused reservations. */
  private async finishClaim(queue: string, claims: { id: string; workerId: string }[], planned: Map<string, number>): Promise<void> {
    let claimed: ClaimedTask[] = [];
    try {
      claimed = await this.opts.store.claim(queue, claims, Date.now(), this.opts.leaseMs(), this.leader());
    } catch (err) {
      if (err instanceof FencedError) this.fenced(err);
      else this.log.error({ err, queue }, "claim failed");
    }
    await this.deliver(claimed, planned);
    // Unused reservations are back: another round may fill them.
    if (claimed.length < claims.length) this.kick();
  }

  /**
   * The fast lane at submit, on the leader: picks a worker for each new task that is due, as a
   * round would (ring, task type, bounded load, free slots), and reserves its slot. The store
   * then claims each task for its worker in the submit call itself when that changes no order
   * (nothing of the queue waiting, not paused, concurrency key has room; TaskStore.submit), which
   * saves the peek and the claim of a round: the task is on its way to the worker before the
   * client has its answer. `settle` sends what was claimed and gives the other slots back.
   * Off while the last round ran out of slots: then tasks may be waiting in other queues, and
   * they go first, in the rounds' rotation.
   */
  planDirect(tasks: readonly NewTask[], now: number): DirectPlan | undefined {
    if (this.stopped || this.backlog) return undefined;
    const { sessions } = this.opts;
    const byQueue = new Map<string, number[]>();
    tasks.forEach((t, i) => {
      if (t.runAtMs > now) return;
      let g = byQueue.get(t.queue);
      if (g === undefined) byQueue.set(t.queue, (g = []));
      g.push(i);
    });
    const workers: (string | undefined)[] = new Array<string | undefined>(tasks.length).fill(undefined);
    const reserved = new Map<string, number>();
    for (const [queue, indexes] of byQueue) {
      const candidates = indexes.map((i) => {
        const t = tasks[i] as NewTask;
        return { id: t.id, type: t.type, affinityKey: t.affinityKey };
      });
      const { claims, planned } = this.plan(queue, candidates, candidates.length);
      if (claims.length === 0) continue;
      const workerOf = new Map(claims.map((c) => [c.id, c.workerId]));
      for (const i of indexes) workers[i] = workerOf.get((tasks[i] as NewTask).id);
      // Reserved at once, so the next queue's plan (and any round meanwhile) sees them taken.
      for (const [workerId, n] of planned) {
        sessions.get(workerId)?.reserve(n);
        reserved.set(workerId, (reserved.get(workerId) ?? 0) + n);
      }
    }
    if (reserved.size === 0) return undefined;
    return {
      claims: { workers, leaseMs: this.opts.leaseMs(), leader: this.leader() },
      settle: (results) => {
        const claimed: ClaimedTask[] = [];
        for (const r of results ?? []) if (r.claimed !== undefined) claimed.push(r.claimed);
        void this.deliver(claimed, reserved);
      },
    };
  }

  /**
   * Sends claimed tasks to their workers (one message each), gives back the reserved slots no
   * task filled, and re-queues the tasks of a worker that left meanwhile (else their leases
   * would have to expire first).
   */
  private async deliver(claimed: readonly ClaimedTask[], reserved: ReadonlyMap<string, number>): Promise<void> {
    const { sessions, store, metrics } = this.opts;
    const byWorker = new Map<string, ClaimedTask[]>();
    for (const t of claimed) {
      let list = byWorker.get(t.workerId);
      if (list === undefined) byWorker.set(t.workerId, (list = []));
      list.push(t);
    }
    for (const [workerId, n] of reserved) sessions.get(workerId)?.release(n - (byWorker.get(workerId)?.length ?? 0));
    const now = Date.now();
    const sent = new Map<string, number>();
    for (const [workerId, tasks] of byWorker) {
      const s = sessions.get(workerId);
      if (s === undefined) {
        await store.requeue(tasks.map((t) => ({ id: t.id, attempt: t.attempt })), "worker gone", now, this.leader()).catch((err: unknown) => {
          if (err instanceof FencedError) this.fenced(err);
          else this.log.error({ err }, "re-queue after a lost worker failed; leases will expire");
        });
        continue;
      }
      s.assign(tasks, true);
      for (const t of tasks) {
        sent.set(t.queue, (sent.get(t.queue) ?? 0) + 1);
        if (t.readyAtMs > 0) metrics.queueWaitSeconds.observe({ queue: t.queue }, Math.max(0, now - t.readyAtMs) / 1000);
      }
    }
    // Counted once per queue: a labelled counter hashes its labels on every call.
    for (const [queue, n] of sent) metrics.dispatched.inc({ queue }, n);
  }

  /** Lanes whose last peek had tasks no worker could take: they are peeked wider. */
  private readonly wideQueues = new Set<string>();

  /**
   * Picks a worker for each candidate, in order, until `want` are planned: by the ring (affinity
   * key or task id, task type, bounded load) among the workers with free slots for the queue.
   */
  private plan(queue: string, candidates: readonly Candidate[], want: number): Plan {
    const { sessions, ring } = this.opts;
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
    let passed = 0;
    for (const c of candidates) {
      if (claims.length >= want) break;
      const workerId = ring.pick(c.affinityKey === "" ? c.id : c.affinityKey, c.type, load, canAccept);
      if (workerId === undefined) {
        passed++;
        continue;
      }
      planned.set(workerId, (planned.get(workerId) ?? 0) + 1);
      claims.push({ id: c.id, workerId });
    }
    return { claims, planned, passed };
  }

  /** One pass over the ready queues (see {@link visitOrder}); returns how many tasks were sent. */
  async round(): Promise<number> {
    const { sessions, store } = this.opts;
    let free = 0;
    for (const s of sessions.values()) free += s.free;
    if (free === 0) {
      this.backlog = this.ready.size > 0;
      return 0;
    }
    const now = Date.now();
    const order = this.visitOrder(await this.readyByTenant(now));
    const batch = this.opts.batchSize ?? 500;
    let sent = 0;
    for (let i = 0; i < order.length && free > 0; i++) {
      const { queue, tenant, next } = order[i] as Visit;
      // The tenant's rotation goes on after the queues it was visited with.
      this.queueCursor.set(tenant, next);
      const lane = laneKey(queue, tenant);
      const kicksBefore = this.kicks.get(lane) ?? 0;
      const want = Math.min(free, batch);
      // Peek as many as wanted and one more (it tells whether more are waiting), or use what
      // was peeked ahead. When some of them no worker can take right now (a type nobody here
      // runs, workers full), peek a window 4× as wide so that they do not block the ones
      // behind them, and keep peeking wide on this queue until a round passes nothing over.
      const wide = this.wideQueues.has(lane);
      let ahead = this.takeAhead(lane, now);
      let plan: Plan;
      let found: number;
      for (;;) {
        let limit: number;
        let candidates: Candidate[] | undefined;
        if (ahead !== undefined) {
          limit = ahead.limit;
          candidates = await ahead.candidates;
          ahead = undefined;
          if (candidates === undefined) continue;
        } else {
          limit = Math.min(want * (wide ? 4 : 1) + 1, 1000);
          candidates = await store.peekReady(queue, limit, tenant);
        }
        plan = this.plan(queue, candidates, want);
        found = candidates.length;
        const wider = Math.min(want * 4 + 1, 1000);
        if (plan.claims.length < want && plan.passed > 0 && found === limit && limit < wider) {
          ahead = { at: now, limit: wider, candidates: store.peekReady(queue, wider, tenant) };
          continue;
        }
        break;
      }
      if (plan.passed > 0) this.wideQueues.add(lane);
      else this.wideQueues.delete(lane);
      const { claims, planned } = plan;
      if (found === 0) void this.dropIdle(queue, tenant, kicksBefore);
      if (claims.length === 0) continue;
      // Reserve the slots now and let the claim run without waiting for it: the next peek goes
      // down the same Redis connection after it, so it already sees these tasks claimed, and the
      // reservations keep every worker within its free slots meanwhile.
      for (const [workerId, n] of planned) sessions.get(workerId)?.reserve(n);
      const claiming = this.finishClaim(queue, claims, planned);
      // More were waiting than claimed: the slots just filled will want the next ones. Peeked
      // right behind the claim (same pipeline, so it sees the queue without the claimed tasks).
      if (found > claims.length) this.peekAhead(queue, tenant, Math.min(claims.length * 4, batch));
      this.track(claiming);
      sent += claims.length;
      free -= claims.length;
    }
    this.backlog = free === 0 && this.ready.size > 0;
    return sent;
  }

  /**
   * Candidates peeked ahead, per lane: the next tasks in line, read right behind a claim (so
   * without the claimed ones) while the workers run what was claimed, so that the round that
   * fills the slots they free claims at once instead of peeking first. Kept {@link AHEAD_MS} at
   * most; dropped when the queue gets new tasks (they may come first). A candidate that is gone
   * by then is simply not claimed.
   */
  private readonly ahead = new Map<string, Ahead>();

  private takeAhead(lane: string, now: number): Ahead | undefined {
    const a = this.ahead.get(lane);
    if (a === undefined) return undefined;
    this.ahead.delete(lane);
    return now - a.at <= AHEAD_MS ? a : undefined;
  }

  /**
   * Peeks ahead, without waiting, up to `most` of the queue's tasks but no more than its workers
   * have slots (4× as many on a queue peeked wide), and one more.
   */
  private peekAhead(queue: string, tenant: string, most: number): void {
    const lane = laneKey(queue, tenant);
    let slots = 0;
    for (const s of this.opts.sessions.values()) if (s.state === "ready" && s.serves(queue)) slots += s.capacity;
    const limit = Math.min(Math.min(slots, most) * (this.wideQueues.has(lane) ? 4 : 1) + 1, 1000);
    if (limit < 2) return;
    const candidates = this.opts.store.peekReady(queue, limit, tenant).catch((err: unknown) => {
      this.log.warn({ err, queue }, "peek ahead failed");
      return undefined;
    });
    this.ahead.set(lane, { at: Date.now(), limit, candidates });
  }
}
