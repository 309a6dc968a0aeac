import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Logger } from "pino";
import {
  SchedulerMessageSchema,
  type SchedulerMessage,
  type WorkerMessage,
  WorkerService,
  type TaskAssignment,
} from "../../gen/taskmesh/v1/worker_service_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import { delay } from "../../lib/lifecycle.js";
import type { WorkerRecord } from "../../lib/keys.js";
import type { SchedulerMetrics } from "../../lib/metrics.js";
import type { ClaimedTask, TaskStore } from "./task-store.js";

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
  /** task id → attempt of everything assigned and not yet finished. */
  readonly inflight = new Map<string, number>();
  /** task id → its type and when it was sent, for the run-time metric. */
  private readonly sent = new Map<string, { type: string; at: number }>();
  private out: AsyncQueue<SchedulerMessage> | undefined;
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
    const transport = createGrpcTransport({
      baseUrl: `http://${opts.record.address}`,
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

  /** Slots the dispatcher may still fill. */
  get free(): number {
    if (this.state !== "ready" || this.record.draining) return 0;
    return Math.max(0, this.slots - this.inflight.size - this.reserved);
  }

  /** Holds `n` slots for tasks being claimed. */
  reserve(n: number): void {
    this.reserved += n;
  }

  /** Gives back `n` held slots (claims that did not succeed). */
  release(n: number): void {
    this.reserved = Math.max(0, this.reserved - n);
  }

  /** Configured slots. */
  get capacity(): number {
    return this.slots;
  }

  /** True if the worker takes tasks of this queue. */
  serves(queue: string): boolean {
    return this.record.queues.length === 0 || this.record.queues.includes(queue);
  }

  /** Registration changed (slots, draining, types). */
  update(record: WorkerRecord): void {
    const wasDraining = this.record.draining;
    const moreSlots = record.slots > this.slots;
    this.record = record;
    this.taskTypes = record.taskTypes;
    this.slots = record.slots;
    if (moreSlots) this.opts.onCapacity();
    if (wasDraining !== record.draining) this.opts.onStateChange(this);
  }

  /** Sends claimed tasks in one message; `reserved` when their slots were reserved beforehand. */
  assign(tasks: ClaimedTask[], reserved = false): void {
    if (reserved) this.release(tasks.length);
    const out = this.out;
    if (out === undefined || this.state !== "ready") {
      // The stream went down between claim and send: give the attempts back at once.
      void this.requeue(tasks.map((t) => ({ id: t.id, attempt: t.attempt })), "worker stream down");
      return;
    }
    const assignments: TaskAssignment[] = [];
    const at = performance.now();
    for (const t of tasks) {
      this.inflight.set(t.id, t.attempt);
      this.sent.set(t.id, { type: t.type, at });
      assignments.push({
        $typeName: "taskmesh.v1.TaskAssignment",
        taskId: t.id,
        attempt: t.attempt,
        type: t.type,
        payload: t.payload,
        timeoutMs: BigInt(t.timeoutMs),
        queue: t.queue,
        tenant: t.tenant,
        labels: t.labels,
        traceparent: t.traceparent ?? "",
      });
    }
    out.push(create(SchedulerMessageSchema, { epoch: this.opts.epoch, assignments }));
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

  /** Forgets an attempt the store re-queued on its own (lease expiry), telling the worker to stop it. */
  forget(taskId: string, attempt: number): void {
    if (this.inflight.get(taskId) === attempt) {
      this.inflight.delete(taskId);
      this.sent.delete(taskId);
      this.cancel(taskId, attempt, "lease expired");
      this.opts.onCapacity();
    }
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
    const wasReady = this.state === "ready";
    this.state = "down";
    if (wasReady) this.opts.onStateChange(this);
    const refs = [...this.inflight].map(([id, attempt]) => ({ id, attempt }));
    this.inflight.clear();
    this.sent.clear();
    if (refs.length > 0) await this.requeue(refs, reason);
  }

  private async requeue(refs: { id: string; attempt: number }[], reason: string): Promise<void> {
    try {
      const n = await this.opts.store.requeue(refs, reason, Date.now());
      this.log.info({ requeued: n, reason }, "re-queued attempts of worker");
    } catch (err) {
      // Redis unreachable: the tasks keep their running lease and the reaper re-queues them.
      this.log.error({ err }, "re-queue failed; leases will expire");
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
      const results = msg.results.map((r) => {
        if (this.inflight.get(r.taskId) === r.attempt) this.inflight.delete(r.taskId);
        const o = r.outcome;
        const outcome =
          r.cancelled
            ? { kind: "cancelled" as const, reason: o.case === "error" ? o.value.message : "cancelled" }
            : o.case === "result"
              ? { kind: "succeeded" as const, result: o.value }
              : {
                  kind: "failed" as const,
                  code: o.case === "error" ? o.value.code : "UNKNOWN",
                  message: o.case === "error" ? o.value.message : "no outcome",
                  retryable: o.case === "error" ? o.value.retryable : true,
                };
        const sent = this.sent.get(r.taskId);
        if (sent !== undefined) {
          this.sent.delete(r.taskId);
          this.opts.metrics.attemptsFinished.inc({ type: sent.type, outcome: outcome.kind });
          this.opts.metrics.runSeconds.observe({ type: sent.type }, (performance.now() - sent.at) / 1000);
        }
        return { id: r.taskId, attempt: r.attempt, outcome };
      });
      this.opts.onCapacity();
      const out = this.out;
      const acked = msg.results.map((r) => ({ taskId: r.taskId, attempt: r.attempt }));
      store.complete(results, now).then(
        // Applied or stale, the worker may forget them now.
        () => out?.push(create(SchedulerMessageSchema, { epoch: this.opts.epoch, acked })),
        (err: unknown) => this.storeFailed(err),
      );
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
            if (this.inflight.get(st.id) === st.attempt) {
              this.inflight.delete(st.id);
              this.sent.delete(st.id);
            }
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
        else this.inflight.set(r.id, r.attempt);
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
    this.out?.end();
    this.abort?.abort();
    if (wasReady) this.opts.onStateChange(this);
    if (requeue) {
      const refs = [...this.inflight].map(([id, attempt]) => ({ id, attempt }));
      this.inflight.clear();
      if (refs.length > 0) await this.requeue(refs, "worker left");
    }
    this.sent.clear();
  }
}
