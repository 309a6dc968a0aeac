import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { meshTransport, type MeshSecurity } from "../../lib/mesh-security.js";
import type { Logger } from "pino";
import {
  SchedulerMessageSchema,
  type SchedulerMessage,
  type WorkerMessage,
  WorkerService,
  type TaskAssignment,
  type TaskRef,
} from "../../gen/taskmesh/v1/worker_service_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import { delay } from "../../lib/lifecycle.js";
import type { WorkerRecord } from "../../lib/keys.js";
import type { SchedulerMetrics } from "../../lib/metrics.js";
import { FencedError, type ClaimedTask, type LeaderStamp, type TaskOutcome, type TaskStore } from "./task-store.js";

/** An attempt assigned to the worker and not finished yet. */
export interface Inflight {
  readonly attempt: number;
  readonly type: string;
  /** `performance.now()` when it was sent; NaN for attempts adopted from an earlier leader. */
  readonly at: number;
}

/**
 * Longest an acknowledgement waits for assignments to ride on. Short: a worker shutting down
 * waits for its last acknowledgements before it leaves.
 */
const ACK_DELAY_MS = 5;

/** The session's link state. */
export type SessionState = "connecting" | "ready" | "down" | "closed";

/** Options for {@link WorkerSession}. */
export interface WorkerSessionOptions {
  record: WorkerRecord;
  epoch: bigint;
  store: TaskStore;
  /** Lease given to claimed tasks and renewed by heartbeats (read at each use: it is live config). */
  leaseMs: () => number;
  /** Ping period; a stream silent for 3 pings is declared dead. @default 1000 */
  pingMs?: number;
  logger: Logger;
  /** Attempt outcomes and run times are counted here. */
  metrics: SchedulerMetrics;
  /** Called when the session gains free slots (results, hello) so the dispatcher runs. */
  onCapacity: () => void;
  /** Called when the session becomes ready or goes down (for the ring). */
  onStateChange: (session: WorkerSession) => void;
  /** What this leader's re-queues carry (they are fenced by it: see TaskStore.requeue). */
  leader: () => LeaderStamp;
  /** Redis refused a re-queue: a leader of a later epoch took over, or it came too late (FencedError.late). */
  onFenced: (err: FencedError) => void;
  /** Mesh credentials to dial the worker with (it must present a worker certificate under mTLS). */
  security?: MeshSecurity;
}

/**
 * The leader's link to one worker: one bidi `Work` stream at the worker's registered address,
 * credit-based (never more in flight than the worker's slots), with application-level pings so a
 * stream that is open but silent is declared dead. When the stream breaks, every attempt in flight
 * on it is re-queued at once (fenced by attempt) and the session reconnects while the worker is
 * registered.
 */
export class WorkerSession {
  state: SessionState = "connecting";
  record: WorkerRecord;
  /** Slots as last reported by the worker itself. */
  private slots: number;
  private taskTypes: string[];
  /**
   * task id → everything assigned and not yet finished: its attempt, and its type and when it was
   * sent (for the run-time metric).
   */
  readonly inflight = new Map<string, Inflight>();
  private out: AsyncQueue<SchedulerMessage> | undefined;
  /**
   * Acknowledgements of recorded results not sent yet: they ride on the next assignments (a busy
   * worker gets those a moment later anyway), or go alone after {@link ACK_DELAY_MS}.
   */
  private acks: TaskRef[] = [];
  private ackTimer: NodeJS.Timeout | undefined;
  private abort: AbortController | undefined;
  private lastHeard = 0;
  private nonce = 0n;
  private readonly client: Client<typeof WorkerService>;
  private readonly log: Logger;
  private readonly pinger: NodeJS.Timeout;
  private readonly pingMs: number;

  constructor(private readonly opts: WorkerSessionOptions) {
    this.record = opts.record;
    this.slots = opts.record.slots;
    this.taskTypes = opts.record.taskTypes;
    this.log = opts.logger.child({ component: "worker-session", workerId: opts.record.id });
    this.pingMs = opts.pingMs ?? 1000;
    const { transport } = meshTransport(opts.security, opts.record.address, ["worker"], {
      pingIntervalMs: this.pingMs,
      pingTimeoutMs: this.pingMs * 2,
    });
    this.client = createClient(WorkerService, transport);
    this.pinger = setInterval(() => this.ping(), this.pingMs);
    this.pinger.unref();
    void this.run();
  }

  /** The worker's id. */
  get id(): string {
    return this.record.id;
  }

  /** Task types the worker runs. */
  get types(): readonly string[] {
    return this.taskTypes;
  }

  /** Slots the dispatcher has promised to tasks being claimed right now. */
  reserved = 0;

  /**
   * Set while the worker's etcd registration is gone but its stream is alive (the worker lost
   * etcd, not its life): it finishes what it runs and gets nothing new until it registers again.
   */
  retired = false;

  /** Slots the dispatcher may still fill. */
  get free(): number {
    if (this.state !== "ready" || this.record.draining || this.retired || !this.alive) return 0;
    return Math.max(0, this.slots - this.inflight.size - this.reserved);
  }

  /**
   * True while the stream is up and the worker answered within the last 1.5 ping periods. A worker
   * that misses a ping gets no new task: it may be frozen or cut off (its stream is dropped after
   * 3 periods of silence), and a task sent there would only be re-queued again.
   */
  get alive(): boolean {
    return this.state === "ready" && Date.now() - this.lastHeard <= this.pingMs * 1.5;
  }

  /** Holds `n` slots for tasks being claimed. */
  reserve(n: number): void {
    this.reserved += n;
  }

  /** Gives back `n` held slots (claims that did not succeed). */
  release(n: number): void {
    this.reserved = Math.max(0, this.reserved - n);
  }

  /**
   * Results received and not yet written to the store, one entry per worker message (its
   * arrival time is the finish time of its tasks; a worker sends at most one message per turn).
   * Written at the end of the turn they came in, each as one store call; the scheduler's Redis
   * connection sends every call at once (no auto-pipelining), so they never hold back a claim
   * for the slots they freed.
   */
  private toComplete: {
    results: { id: string; attempt: number; outcome: TaskOutcome }[];
    acked: TaskRef[];
    out: AsyncQueue<SchedulerMessage> | undefined;
    now: number;
  }[] = [];
  private completeScheduled = false;

  /** Writes the results received to the store; acknowledges them to the worker when recorded. */
  private completeNow(): void {
    if (this.toComplete.length === 0) return;
    const batches = this.toComplete;
    this.toComplete = [];
    for (const { results, acked, out, now } of batches) {
      this.opts.store.complete(results, now).then(
        // Applied or stale, the worker may forget them now.
        () => this.ack(acked, out),
        (err: unknown) => this.storeFailed(err),
      );
    }
  }

  /** Configured slots. */
  get capacity(): number {
    return this.slots;
  }

  /** True if the worker takes tasks of this queue. */
  serves(queue: string): boolean {
    return this.record.queues.length === 0 || this.record.queues.includes(queue);
  }

  /** Registration changed (slots, draining, types), or is back after it was gone. */
  update(record: WorkerRecord): void {
    const wasDraining = this.record.draining;
    const wasRetired = this.retired;
    this.retired = false;
    const moreSlots = record.slots > this.slots;
    this.record = record;
    this.taskTypes = record.taskTypes;
    this.slots = record.slots;
    if (moreSlots || wasRetired) this.opts.onCapacity();
    if (wasDraining !== record.draining || wasRetired) this.opts.onStateChange(this);
  }

  /** The worker's registration is gone while its stream lives on: see {@link retired}. */
  retire(): void {
    if (this.retired) return;
    this.retired = true;
    this.opts.onStateChange(this);
  }

  /** Sends claimed tasks in one message; `reserved` when their slots were reserved beforehand. */
  assign(tasks: ClaimedTask[], reserved = false): void {
    if (reserved) this.reserved = Math.max(0, this.reserved - tasks.length);
    this.send(tasks);
  }

  private send(tasks: ClaimedTask[]): void {
    const out = this.out;
    if (out === undefined || this.state !== "ready") {
      // The stream went down between claim and send: give the attempts back at once.
      void this.requeue(tasks.map((t) => ({ id: t.id, attempt: t.attempt })), "worker stream down");
      return;
    }
    const assignments: TaskAssignment[] = [];
    const at = performance.now();
    for (const t of tasks) {
      this.inflight.set(t.id, { attempt: t.attempt, type: t.type, at });
      assignments.push({
        $typeName: "taskmesh.v1.TaskAssignment",
        taskId: t.id,
        attempt: t.attempt,
        type: t.type,
        // An empty payload is left out: the worker reads a missing one as {} (no Struct to
        // encode and decode for the many tasks that have none).
        payload: isEmpty(t.payload) ? undefined : t.payload,
        timeoutMs: BigInt(t.timeoutMs),
        queue: t.queue,
        tenant: t.tenant,
        labels: t.labels,
        traceparent: t.traceparent ?? "",
      });
    }
    out.push(create(SchedulerMessageSchema, { epoch: this.opts.epoch, assignments, acked: this.takeAcks() }));
  }

  /** Queues acknowledgements for the worker (see {@link acks}). */
  private ack(refs: TaskRef[], out: AsyncQueue<SchedulerMessage> | undefined): void {
    // Acks belong to the stream the results came on: a new stream gets the results again.
    if (out === undefined || out !== this.out) return;
    for (const r of refs) this.acks.push(r);
    this.ackTimer ??= setTimeout(() => this.flushAcks(), ACK_DELAY_MS);
  }

  private takeAcks(): TaskRef[] {
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    const acks = this.acks;
    if (acks.length > 0) this.acks = [];
    return acks;
  }

  private flushAcks(): void {
    this.ackTimer = undefined;
    const acked = this.takeAcks();
    if (acked.length > 0) this.out?.push(create(SchedulerMessageSchema, { epoch: this.opts.epoch, acked }));
  }

  /** Asks the worker to abort an attempt. */
  cancel(taskId: string, attempt: number, reason: string): void {
    this.out?.push(
      create(SchedulerMessageSchema, {
        epoch: this.opts.epoch,
        cancels: [{ taskId, attempt, reason }],
      }),
    );
  }

  /**
   * The store re-queued an attempt because its lease expired. If this session holds it, its
   * worker has not heartbeated for a whole lease although the stream looks open: the stream is
   * dropped (its other attempts are re-queued too, fenced by attempt) and the worker is told to
   * stop the attempt should it ever hear. Returns true when this session held it.
   */
  leaseExpired(taskId: string, attempt: number): boolean {
    if (this.inflight.get(taskId)?.attempt !== attempt) return false;
    this.inflight.delete(taskId);
    this.cancel(taskId, attempt, "lease expired");
    if (this.state === "ready") {
      this.log.warn({ taskId, attempt, silentMs: Date.now() - this.lastHeard }, "a lease expired on an open stream; dropping it");
      this.abort?.abort(new Error("lease expired on an open stream"));
    }
    this.opts.onCapacity();
    return true;
  }

  private ping(): void {
    if (this.out === undefined) return;
    if (this.state === "ready" && Date.now() - this.lastHeard > this.pingMs * 3) {
      this.log.warn({ silentMs: Date.now() - this.lastHeard }, "worker stream silent, dropping it");
      this.abort?.abort(new Error("worker stream silent"));
      return;
    }
    this.nonce++;
    this.out.push(create(SchedulerMessageSchema, { epoch: this.opts.epoch, ping: { nonce: this.nonce } }));
  }

  private async run(): Promise<void> {
    let backoff = 100;
    while (this.state !== "closed") {
      const out = new AsyncQueue<SchedulerMessage>();
      const abort = new AbortController();
      this.out = out;
      this.abort = abort;
      this.state = "connecting";
      out.push(create(SchedulerMessageSchema, { epoch: this.opts.epoch, ping: { nonce: 0n } }));
      try {
        const replies = this.client.work(out, { signal: abort.signal });
        for await (const msg of replies) {
          this.lastHeard = Date.now();
          await this.onMessage(msg);
          backoff = 100;
        }
        this.log.info("worker stream ended");
      } catch (err) {
        if (!this.isClosed()) this.log.warn({ err: String(err) }, "worker stream failed");
      } finally {
        out.end();
        abort.abort();
        this.out = undefined;
        this.takeAcks();
      }
      if (this.isClosed()) return;
      await this.streamDown("worker stream broken");
      await delay(backoff);
      backoff = Math.min(backoff * 2, 2000);
    }
  }

  /** Read through a method: TypeScript narrows the field across awaits otherwise. */
  private isClosed(): boolean {
    return this.state === "closed";
  }

  private async streamDown(reason: string): Promise<void> {
    this.completeNow();
    const wasReady = this.state === "ready";
    this.state = "down";
    if (wasReady) this.opts.onStateChange(this);
    const refs = [...this.inflight].map(([id, f]) => ({ id, attempt: f.attempt }));
    this.inflight.clear();
    if (refs.length > 0) await this.requeue(refs, reason);
  }

  private async requeue(refs: { id: string; attempt: number }[], reason: string): Promise<void> {
    try {
      const n = await this.opts.store.requeue(refs, reason, Date.now(), this.opts.leader());
      this.log.info({ requeued: n, reason }, "re-queued attempts of worker");
    } catch (err) {
      if (err instanceof FencedError) {
        // A later leader owns these attempts now (it adopted them from the worker's hello); or
        // the re-queue came too late and the tasks keep their running lease until it expires.
        this.opts.onFenced(err);
      } else {
        // Redis unreachable: the tasks keep their running lease and the reaper re-queues them.
        this.log.error({ err }, "re-queue failed; leases will expire");
      }
    }
    this.opts.onCapacity();
  }

  /**
   * Handles one worker message. Only a hello is awaited (the session is not ready before the
   * store has answered it); reports go to Redis without waiting, so the next message is read at
   * once: commands on one connection run in the order sent, so a task's progress still lands
   * before its result. A failed write drops the stream: the worker then re-sends every result
   * not acknowledged, and attempts it no longer runs are re-queued.
   */
  private async onMessage(msg: WorkerMessage): Promise<void> {
    const store = this.opts.store;
    const now = Date.now();
    if (msg.hello !== undefined) await this.onHello(msg.hello.slots, msg.hello.taskTypes, msg.hello.running, now);
    if (msg.progress.length > 0) {
      store
        .progress(msg.progress.map((p) => ({ id: p.taskId, attempt: p.attempt, progress: p.progress, message: p.message })), now)
        .catch((err: unknown) => this.storeFailed(err));
    }
    if (msg.logs.length > 0) {
      store
        .log(msg.logs.map((l) => ({ id: l.taskId, attempt: l.attempt, line: l.line })), now)
        .catch((err: unknown) => this.storeFailed(err));
    }
    if (msg.results.length > 0) {
      const metrics = this.opts.metrics;
      const finished = new Counts();
      const t = performance.now();
      const results: { id: string; attempt: number; outcome: TaskOutcome }[] = [];
      const acked: TaskRef[] = [];
      for (const r of msg.results) {
        const o = r.outcome;
        const outcome: TaskOutcome = r.cancelled
          ? { kind: "cancelled", reason: o.case === "error" ? o.value.message : "cancelled" }
          : o.case === "result"
            ? { kind: "succeeded", result: o.value }
            : {
                kind: "failed",
                code: o.case === "error" ? o.value.code : "UNKNOWN",
                message: o.case === "error" ? o.value.message : "no outcome",
                retryable: o.case === "error" ? o.value.retryable : true,
              };
        const f = this.inflight.get(r.taskId);
        if (f !== undefined && f.attempt === r.attempt) {
          this.inflight.delete(r.taskId);
          // Attempts adopted from an earlier leader have no send time (nor type) here.
          if (!Number.isNaN(f.at)) {
            finished.add(f.type, outcome.kind);
            metrics.runSeconds.observe({ type: f.type }, (t - f.at) / 1000);
          }
        }
        results.push({ id: r.taskId, attempt: r.attempt, outcome });
        acked.push({ $typeName: "taskmesh.v1.TaskRef", taskId: r.taskId, attempt: r.attempt });
      }
      finished.each((type, outcome, n) => metrics.attemptsFinished.inc({ type, outcome }, n));
      this.opts.onCapacity();
      this.toComplete.push({ results, acked, out: this.out, now });
      if (!this.completeScheduled) {
        this.completeScheduled = true;
        setImmediate(() => {
          this.completeScheduled = false;
          this.completeNow();
        });
      }
    }
    if (msg.heartbeat !== undefined) {
      if (msg.heartbeat.slots > 0 && msg.heartbeat.slots !== this.slots) {
        const more = msg.heartbeat.slots > this.slots;
        this.slots = msg.heartbeat.slots;
        if (more) this.opts.onCapacity();
      }
      const running = msg.heartbeat.running.map((r) => ({ id: r.taskId, attempt: r.attempt }));
      if (running.length > 0) {
        store.renew(running, now, this.opts.leaseMs()).then(({ stale }) => {
          for (const st of stale) {
            if (this.inflight.get(st.id)?.attempt === st.attempt) this.inflight.delete(st.id);
            this.cancel(st.id, st.attempt, "stale attempt");
          }
        }, (err: unknown) => this.storeFailed(err));
      }
    }
  }

  private async onHello(slots: number, taskTypes: string[], running: { taskId: string; attempt: number }[], now: number): Promise<void> {
    this.slots = slots;
    if (taskTypes.length > 0) this.taskTypes = taskTypes;
    // Attempts the worker still runs (e.g. after a leader change): keep those the store agrees
    // are current, cancel the rest.
    const refs = running.map((r) => ({ id: r.taskId, attempt: r.attempt }));
    if (refs.length > 0) {
      const { stale } = await this.opts.store.renew(refs, now, this.opts.leaseMs());
      const staleSet = new Set(stale.map((x) => `${x.id}/${x.attempt}`));
      for (const r of refs) {
        if (staleSet.has(`${r.id}/${r.attempt}`)) this.cancel(r.id, r.attempt, "stale attempt");
        else this.inflight.set(r.id, { attempt: r.attempt, type: "", at: Number.NaN });
      }
    }
    this.state = "ready";
    this.log.info({ slots: this.slots, adopted: this.inflight.size }, "worker stream ready");
    this.opts.onStateChange(this);
    this.opts.onCapacity();
  }

  private storeFailed(err: unknown): void {
    if (this.isClosed()) return;
    this.log.error({ err }, "recording the worker's reports failed; dropping its stream");
    this.abort?.abort(new Error("store write failed"));
  }

  /**
   * Closes the stream. With `requeue`, attempts in flight go back to the queue at once (the worker
   * left); without, they are left RUNNING for the next leader to adopt (leadership lost).
   */
  async close(requeue: boolean): Promise<void> {
    if (this.state === "closed") return;
    const wasReady = this.state === "ready";
    this.state = "closed";
    clearInterval(this.pinger);
    this.completeNow();
    this.flushAcks();
    this.out?.end();
    this.abort?.abort();
    if (wasReady) this.opts.onStateChange(this);
    if (requeue) {
      const refs = [...this.inflight].map(([id, f]) => ({ id, attempt: f.attempt }));
      this.inflight.clear();
      if (refs.length > 0) await this.requeue(refs, "worker left");
    }
  }
}

/** True for `{}` (no own keys). */
function isEmpty(o: object): boolean {
  for (const _ in o) return false;
  return true;
}

/** Attempts finished per (type, outcome) within one worker message: one counter call each. */
class Counts {
  private readonly byKey = new Map<string, { type: string; outcome: string; n: number }>();
  private last: { type: string; outcome: string; n: number } | undefined;

  add(type: string, outcome: string): void {
    // A message's results are mostly of one type and outcome.
    const last = this.last;
    if (last !== undefined && last.type === type && last.outcome === outcome) {
      last.n++;
      return;
    }
    const key = `${type}\u0000${outcome}`;
    let c = this.byKey.get(key);
    if (c === undefined) this.byKey.set(key, (c = { type, outcome, n: 0 }));
    c.n++;
    this.last = c;
  }

  each(fn: (type: string, outcome: string, n: number) => void): void {
    for (const c of this.byKey.values()) fn(c.type, c.outcome, c.n);
  }
}
