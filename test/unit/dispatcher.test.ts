import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../lib/logger.js";
import { schedulerMetrics } from "../../lib/metrics.js";
import { Dispatcher } from "../../services/scheduler/dispatcher.js";
import { Ring } from "../../services/scheduler/ring.js";
import { FencedError, type ClaimedTask, type LeaderStamp, type NewTask, type SubmitResult, type TaskStore } from "../../services/scheduler/task-store.js";
import type { WorkerSession } from "../../services/scheduler/worker-session.js";
import { waitFor } from "../support/wait.js";

interface Ready {
  id: string;
  type: string;
  affinityKey: string;
}

/**
 * The part of TaskStore the dispatcher uses, over in-memory queues, recording its calls: queue `q`
 * of tenant `t` (`ready`) and any number of `others`.
 */
class FakeStore {
  ready: Ready[] = [];
  readonly others = new Map<string, { tenants: string[]; ready: Ready[] }>();
  /** Every call in order: `peek <limit>` or `claim <n>`. */
  readonly calls: string[] = [];

  add(n: number, type = "noop", prefix = "t"): void {
    for (let i = 0; i < n; i++) this.ready.push({ id: `${prefix}${this.ready.length}-${i}`, type, affinityKey: "" });
  }

  /** Adds a queue of `tenants` holding `n` tasks. */
  addQueue(queue: string, tenants: string[], n: number): void {
    this.others.set(queue, { tenants, ready: Array.from({ length: n }, (_, i) => ({ id: `${queue}-${i}`, type: "noop", affinityKey: "" })) });
  }

  private list(queue: string): Ready[] {
    return queue === "q" ? this.ready : (this.others.get(queue)?.ready ?? []);
  }

  async readyQueues(): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>(this.ready.length > 0 ? [["q", ["t"]]] : []);
    for (const [q, o] of this.others) if (o.ready.length > 0) out.set(q, o.tenants);
    return out;
  }

  async idle(queue: string): Promise<boolean> {
    return this.list(queue).length === 0;
  }

  async peekReady(queue: string, limit: number): Promise<Ready[]> {
    this.calls.push(queue === "q" ? `peek ${limit}` : `peek ${queue} ${limit}`);
    return this.list(queue).slice(0, limit).map((r) => ({ ...r }));
  }

  /** Set when a later leader has taken over: claims fail as Redis refuses them. */
  fencedBy: bigint | undefined;
  /** Set while claims reach Redis after their leader's `until`: refused as late (FENCED 0). */
  late = false;

  async claim(queue: string, claims: readonly { id: string; workerId: string }[], _now: number, _lease: number, leader: LeaderStamp): Promise<ClaimedTask[]> {
    this.calls.push(`claim ${claims.length}`);
    if (this.fencedBy !== undefined && this.fencedBy > leader.epoch) throw new FencedError(this.fencedBy);
    if (this.late) throw new FencedError(0n);
    const out: ClaimedTask[] = [];
    const list = this.list(queue);
    for (const c of claims) {
      const i = list.findIndex((r) => r.id === c.id);
      if (i < 0) continue;
      const [r] = list.splice(i, 1) as [Ready];
      out.push({ id: r.id, attempt: 1, type: r.type, payload: {}, timeoutMs: 0, queue, tenant: "t", labels: {}, workerId: c.workerId, readyAtMs: 0 });
    }
    return out;
  }

  async requeue(): Promise<number> {
    return 0;
  }
}

/** The part of WorkerSession the dispatcher uses. */
class FakeSession {
  state = "ready";
  record = { draining: false, queues: [] as string[] };
  readonly inflight = new Map<string, number>();
  reserved = 0;
  readonly assigned: string[] = [];
  /** Most tasks this worker ever had at once (running plus being claimed). */
  peak = 0;

  constructor(
    readonly id: string,
    readonly capacity: number,
  ) {}

  get free(): number {
    return Math.max(0, this.capacity - this.inflight.size - this.reserved);
  }

  serves(): boolean {
    return true;
  }

  reserve(n: number): void {
    this.reserved += n;
    this.peak = Math.max(this.peak, this.inflight.size + this.reserved);
  }

  release(n: number): void {
    this.reserved = Math.max(0, this.reserved - n);
  }

  assign(tasks: ClaimedTask[], reserved = false): void {
    if (reserved) this.release(tasks.length);
    for (const t of tasks) {
      this.inflight.set(t.id, t.attempt);
      this.assigned.push(t.id);
    }
    this.peak = Math.max(this.peak, this.inflight.size + this.reserved);
  }

  /** The worker finishes its `n` oldest attempts. */
  finish(n: number): void {
    for (const id of [...this.inflight.keys()].slice(0, n)) this.inflight.delete(id);
  }
}

function setup(workers: { id: string; slots: number; types?: string[] }[]) {
  const store = new FakeStore();
  const ring = new Ring();
  const sessions = new Map<string, FakeSession>();
  const fenced: FencedError[] = [];
  for (const w of workers) {
    sessions.set(w.id, new FakeSession(w.id, w.slots));
    ring.add(w.id, w.types ?? ["noop"]);
  }
  const dispatcher = new Dispatcher({
    store: store as unknown as TaskStore,
    ring,
    sessions: sessions as unknown as ReadonlyMap<string, WorkerSession>,
    leaseMs: () => 10_000,
    metrics: schedulerMetrics(new Registry()),
    logger: silentLogger(),
    onFenced: (err) => fenced.push(err),
  });
  return { store, sessions, dispatcher, fenced };
}

describe("Dispatcher", () => {
  it("claims no more tasks than a worker's free slots, in queue order", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 10 }]);
    store.add(100);
    const order = store.ready.map((r) => r.id);
    const w = sessions.get("w") as FakeSession;
    expect(await dispatcher.round()).toBe(10);
    await waitFor(() => w.assigned.length === 10);
    // One more than the free slots is peeked: it tells that more are waiting.
    expect(store.calls.slice(0, 2)).toEqual(["peek 11", "claim 10"]);
    expect(w.assigned).toEqual(order.slice(0, 10));
    expect(await dispatcher.round()).toBe(0);
    expect(w.peak).toBe(10);
  });

  it("peeks the next tasks while the worker runs, and claims them without a peek when slots free", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 10 }]);
    store.add(30);
    const order = store.ready.map((r) => r.id);
    const w = sessions.get("w") as FakeSession;
    await dispatcher.round();
    // The peek ahead goes out right behind the claim.
    await waitFor(() => store.calls.length === 3);
    expect(store.calls).toEqual(["peek 11", "claim 10", "peek 11"]);
    w.finish(10);
    expect(await dispatcher.round()).toBe(10);
    await waitFor(() => store.calls.length === 5);
    expect(store.calls.slice(3)).toEqual(["claim 10", "peek 11"]);
    w.finish(4);
    expect(await dispatcher.round()).toBe(4);
    await waitFor(() => w.assigned.length === 24);
    expect(w.assigned).toEqual(order.slice(0, 24));
    expect(w.peak).toBe(10);
  });

  it("peeks afresh when the queue got new tasks (they may come first)", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 2 }]);
    store.add(10);
    const w = sessions.get("w") as FakeSession;
    await dispatcher.round();
    await waitFor(() => store.calls.length === 3);
    // A task of a higher priority arrives at the head of the queue.
    store.ready.unshift({ id: "urgent", type: "noop", affinityKey: "" });
    dispatcher.kick([{ queue: "q", tenant: "t" }]);
    w.finish(2);
    await dispatcher.round();
    await waitFor(() => w.assigned.length === 4);
    expect(store.calls.slice(3, 5)).toEqual(["peek 3", "claim 2"]);
    expect(w.assigned[2]).toBe("urgent");
  });

  it("peeks wider when tasks at the head are of a type no worker runs, so they do not block the rest", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 3 }]);
    store.add(5, "nobody", "x");
    store.add(10, "noop", "n");
    const w = sessions.get("w") as FakeSession;
    expect(await dispatcher.round()).toBe(3);
    await waitFor(() => w.assigned.length === 3);
    expect(store.calls.slice(0, 3)).toEqual(["peek 4", "peek 13", "claim 3"]);
    expect(w.assigned.every((id) => id.startsWith("n"))).toBe(true);
    // The queue stays peeked wide while the head is blocked.
    await waitFor(() => store.calls.length === 4);
    expect(store.calls[3]).toBe("peek 13");
  });

  it("spreads tasks over workers without exceeding any worker's free slots", async () => {
    const { store, sessions, dispatcher } = setup([
      { id: "a", slots: 3 },
      { id: "b", slots: 5 },
    ]);
    store.add(50);
    const a = sessions.get("a") as FakeSession;
    const b = sessions.get("b") as FakeSession;
    for (let i = 0; i < 5; i++) {
      await dispatcher.round();
      await waitFor(() => a.reserved === 0 && b.reserved === 0);
      a.finish(2);
      b.finish(1);
    }
    expect(a.peak).toBeLessThanOrEqual(3);
    expect(b.peak).toBeLessThanOrEqual(5);
    expect(new Set([...a.assigned, ...b.assigned]).size).toBe(a.assigned.length + b.assigned.length);
  });

  it("plans direct claims at submit within free slots and type, then sends the claimed and frees the rest", async () => {
    const { sessions, dispatcher } = setup([
      { id: "a", slots: 2 },
      { id: "b", slots: 1, types: ["other"] },
    ]);
    const newTask = (id: string, type = "noop", runAtMs = 0) =>
      ({ id, type, queue: "q", affinityKey: "", runAtMs }) as unknown as NewTask;
    // Not leading (never started): no plan.
    expect(dispatcher.planDirect([newTask("x")], 1000)).toBeUndefined();
    dispatcher.start(() => ({ epoch: 1n, until: Number.MAX_SAFE_INTEGER }));
    try {
      const tasks = [newTask("t1"), newTask("t2"), newTask("t3"), newTask("o1", "other"), newTask("late", "noop", 5000)];
      const plan = dispatcher.planDirect(tasks, 1000);
      if (plan === undefined) throw new Error("no plan");
      // Two noop slots on a, one "other" slot on b; t3 finds no slot and the delayed one is not due.
      expect(plan.claims.workers).toEqual(["a", "a", undefined, "b", undefined]);
      const a = sessions.get("a") as FakeSession;
      const b = sessions.get("b") as FakeSession;
      expect([a.reserved, b.reserved]).toEqual([2, 1]);
      // The store claimed t1 and o1 only (say t2 found tasks waiting before it).
      const claimed = (id: string, workerId: string): ClaimedTask => ({
        id,
        attempt: 1,
        type: "noop",
        payload: {},
        timeoutMs: 0,
        queue: "q",
        tenant: "t",
        labels: {},
        workerId,
        readyAtMs: 0,
      });
      const results = tasks.map((t) => ({
        task: {} as SubmitResult["task"],
        existing: false,
        ...(t.id === "t1" ? { claimed: claimed("t1", "a") } : t.id === "o1" ? { claimed: claimed("o1", "b") } : {}),
      }));
      plan.settle(results);
      expect(a.assigned).toEqual(["t1"]);
      expect(b.assigned).toEqual(["o1"]);
      expect([a.reserved, b.reserved]).toEqual([0, 0]);
      // A failed store call gives every reservation back.
      const again = dispatcher.planDirect([newTask("t4")], 1000);
      expect(a.reserved).toBe(1);
      again?.settle(undefined);
      expect(a.reserved).toBe(0);
      // No free slot for the type: no plan at all.
      expect(dispatcher.planDirect([newTask("o2", "other")], 1000)).toBeUndefined();
    } finally {
      await dispatcher.stop();
    }
  });

  it("takes turns by tenant: a flood of queues of one tenant delays another tenant's task by one turn", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 1 }]);
    for (let i = 0; i < 200; i++) store.addQueue(`x${String(i).padStart(3, "0")}`, ["x"], 1);
    store.addQueue("y", ["y"], 3);
    const w = sessions.get("w") as FakeSession;
    for (let round = 0; round < 6; round++) {
      expect(await dispatcher.round()).toBe(1);
      await waitFor(() => w.assigned.length === round + 1);
      w.finish(1);
    }
    // Turns alternate between the tenants, and x's turns go round its queues.
    expect(w.assigned).toEqual(["x000-0", "y-0", "x001-0", "y-1", "x002-0", "y-2"]);
  });

  it("visits each tenant's lane of a shared queue on that tenant's turn, and at most 256 lanes a round", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 1000 }]);
    // (The fake keeps one list per queue: the first lane visited takes both tasks.)
    store.addQueue("shared", ["a", "b"], 2);
    for (let i = 0; i < 300; i++) store.addQueue(`c${String(i).padStart(3, "0")}`, ["c"], 1);
    const w = sessions.get("w") as FakeSession;
    expect(await dispatcher.round()).toBe(2 + 254);
    await waitFor(() => w.assigned.length === 256);
    expect(store.calls.filter((c) => c.startsWith("peek shared")).length).toBe(2);
    // The next round goes on with the lanes not visited yet.
    expect(await dispatcher.round()).toBe(46);
  });

  it("keeps the submit-time fast lane off while the last round ran out of slots", async () => {
    const { store, sessions, dispatcher } = setup([{ id: "w", slots: 1 }]);
    const newTask = (id: string): NewTask => ({ id, tenant: "t", type: "noop", queue: "fresh", priority: 2, payload: {}, affinityKey: "", maxAttempts: 1, backoff: { initialMs: 1, maxMs: 1, multiplier: 1, jitter: 0 }, timeoutMs: 0, runAtMs: 0, idempotencyKey: "", labels: {}, resultTtlMs: 1000, concurrencyKey: "", concurrencyLimit: 0 });
    dispatcher.start(() => ({ epoch: 1n, until: Number.MAX_SAFE_INTEGER }));
    try {
      store.addQueue("a", ["t"], 2);
      dispatcher.kick([{ queue: "a", tenant: "t" }]);
      const w = sessions.get("w") as FakeSession;
      await waitFor(() => w.assigned.length === 1);
      // A slot frees; before a round fills it, a new task must not take it.
      w.finish(1);
      expect(dispatcher.planDirect([newTask("n1")], 1000)).toBeUndefined();
      dispatcher.kick();
      await waitFor(() => w.assigned.length === 2);
      w.finish(1);
      dispatcher.kick();
      // The round after that ends with the slot free: the fast lane is back.
      await waitFor(() => dispatcher.planDirect([newTask("n2")], 1000) !== undefined, { what: "fast lane back" });
    } finally {
      await dispatcher.stop();
    }
  });

  it("reports a claim refused for an older epoch, sends nothing and gives the slots back", async () => {
    const { store, sessions, dispatcher, fenced } = setup([{ id: "w", slots: 4 }]);
    store.add(4);
    store.fencedBy = 7n;
    dispatcher.start(() => ({ epoch: 5n, until: Number.MAX_SAFE_INTEGER }));
    try {
      await waitFor(() => fenced.length > 0, { what: "the fenced claim reported" });
      const w = sessions.get("w") as FakeSession;
      expect(fenced[0]?.newerEpoch).toBe(7n);
      expect(w.assigned).toEqual([]);
      await waitFor(() => w.reserved === 0, { what: "reservations given back" });
    } finally {
      await dispatcher.stop();
    }
  });

  it("reports a claim refused as late, gives the slots back, and dispatches on: a late write deposes nobody", async () => {
    const { store, sessions, dispatcher, fenced } = setup([{ id: "w", slots: 4 }]);
    store.add(4);
    store.late = true;
    dispatcher.start(() => ({ epoch: 5n, until: Number.MAX_SAFE_INTEGER }));
    try {
      await waitFor(() => fenced.length > 0, { what: "the late claim reported" });
      const w = sessions.get("w") as FakeSession;
      expect(fenced[0]?.late).toBe(true);
      expect(w.assigned).toEqual([]);
      // etcd confirmed the lease again: the same leadership's next claims go through.
      store.late = false;
      dispatcher.kick();
      await waitFor(() => w.assigned.length === 4, { what: "the tasks dispatched after the late claim" });
      expect(w.reserved).toBe(0);
    } finally {
      await dispatcher.stop();
    }
  });
});
