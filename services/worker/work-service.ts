import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "pino";
import {
  type SchedulerMessage,
  type TaskAccepted,
  type TaskProgress,
  type TaskResult,
  type WorkerMessage,
  WorkerMessageSchema,
  WorkerService,
  TaskResultSchema,
} from "../../gen/taskmesh/v1/worker_service_pb.js";
import { TaskErrorSchema } from "../../gen/taskmesh/v1/task_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import type { Assignment, Executor, Outcome } from "./executor.js";
import type { JsonObject } from "./handlers.js";

/** Options for {@link WorkSession}. */
export interface WorkSessionOptions {
  workerId: string;
  executor: Executor;
  taskTypes: () => string[];
  logger: Logger;
  /** Heartbeat period. @default 1000 */
  heartbeatMs?: number;
}

interface ActiveStream {
  epoch: bigint;
  out: AsyncQueue<WorkerMessage>;
}

/**
 * The worker's side of `WorkerService.Work`: it owns the link between the executor and whichever
 * scheduler stream is current. Reports (accepted, progress, logs, results) are buffered and
 * flushed as one message per event-loop turn. A result is kept until the scheduler acknowledges it
 * (`acked`): results not acknowledged when a stream breaks go out again on the next stream (the
 * scheduler fences stale attempts, so a repeat is harmless). Only the newest epoch is obeyed.
 */
export class WorkSession {
  private epoch = -1n;
  private active: ActiveStream | undefined;
  private pending = create(WorkerMessageSchema);
  private pendingCount = 0;
  /**
   * Accepted reports not flushed yet, by `taskId/attempt`: an attempt that finishes before the
   * flush needs none (its result says more; short tasks are most of a busy worker's traffic).
   */
  private readonly acceptedPending = new Map<string, TaskAccepted>();
  /** Latest progress per attempt: coalesced, only the newest value matters. */
  private readonly progress = new Map<string, TaskProgress>();
  /** Results sent or to send, until acknowledged: `taskId/attempt` → result. */
  private readonly unacked = new Map<string, TaskResult>();
  private ackWaiters: (() => void)[] = [];
  /**
   * Assignments that found every slot busy (the slot count was lowered while they were on the
   * way): they start, in order, as slots free up, and count as running for heartbeats.
   */
  private backlog: Assignment[] = [];
  private flushScheduled = false;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly log: Logger;
  private closed = false;

  constructor(private readonly opts: WorkSessionOptions) {
    this.log = opts.logger.child({ component: "work-session" });
    this.heartbeat = setInterval(() => this.sendHeartbeat(), opts.heartbeatMs ?? 1000);
    this.heartbeat.unref();
  }

  /** Executor callbacks: wire these into the executor's `events`. */
  readonly events = {
    accepted: (a: { taskId: string; attempt: number }): void => {
      this.acceptedPending.set(refKey(a.taskId, a.attempt), {
        $typeName: "taskmesh.v1.TaskAccepted",
        taskId: a.taskId,
        attempt: a.attempt,
      });
      this.schedule();
    },
    progress: (taskId: string, attempt: number, percent: number, message: string): void => {
      this.progress.set(refKey(taskId, attempt), {
        $typeName: "taskmesh.v1.TaskProgress",
        taskId,
        attempt,
        progress: percent,
        message,
      });
      this.schedule();
    },
    log: (taskId: string, attempt: number, line: string): void => {
      this.pending.logs.push({ $typeName: "taskmesh.v1.TaskLog", taskId, attempt, line });
      this.schedule();
    },
    finished: (taskId: string, attempt: number, outcome: Outcome): void => {
      const key = refKey(taskId, attempt);
      const result = resultMessage(taskId, attempt, outcome);
      this.acceptedPending.delete(key);
      this.unacked.set(key, result);
      this.pending.results.push(result);
      this.schedule();
      if (this.backlog.length > 0) this.startBacklog();
    },
  };

  /** Results the scheduler has not acknowledged yet. */
  get unackedResults(): number {
    return this.unacked.size;
  }

  /** Resolves when every result is acknowledged, or after `timeoutMs`. */
  whenAcked(timeoutMs: number): Promise<void> {
    if (this.unacked.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      t.unref();
      this.ackWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private schedule(): void {
    this.pendingCount++;
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    const stream = this.active;
    if (stream === undefined) return;
    if (this.pendingCount === 0 && this.progress.size === 0) return;
    const msg = this.pending;
    if (this.acceptedPending.size > 0) {
      for (const a of this.acceptedPending.values()) msg.accepted.push(a);
      this.acceptedPending.clear();
    }
    if (this.progress.size > 0) {
      for (const p of this.progress.values()) msg.progress.push(p);
      this.progress.clear();
    }
    this.pending = create(WorkerMessageSchema);
    this.pendingCount = 0;
    if (msg.accepted.length + msg.progress.length + msg.results.length + msg.logs.length === 0) return;
    stream.out.push(msg);
  }

  /** Sends a heartbeat now (e.g. after the slot count changed) rather than at the next tick. */
  nudge(): void {
    this.sendHeartbeat();
  }

  private sendHeartbeat(): void {
    const stream = this.active;
    if (stream === undefined) return;
    const ex = this.opts.executor;
    stream.out.push(
      create(WorkerMessageSchema, {
        heartbeat: {
          running: this.held(),
          slots: ex.slots,
          slotsUsed: ex.used,
        },
      }),
    );
  }

  /** Starts waiting assignments while slots are free (after a result or a slot increase). */
  startBacklog(): void {
    const ex = this.opts.executor;
    while (this.backlog.length > 0 && ex.used < ex.slots) {
      const a = this.backlog.shift() as Assignment;
      ex.start(a);
    }
  }

  /** Attempts this worker holds: running, plus waiting for a slot. */
  private held(): { taskId: string; attempt: number }[] {
    const refs = this.opts.executor.running().map((r) => ({ taskId: r.taskId, attempt: r.attempt }));
    for (const a of this.backlog) refs.push({ taskId: a.taskId, attempt: a.attempt });
    return refs;
  }

  private handle(msg: SchedulerMessage): void {
    const ex = this.opts.executor;
    if (msg.acked.length > 0) {
      for (const a of msg.acked) this.unacked.delete(refKey(a.taskId, a.attempt));
      if (this.unacked.size === 0 && this.ackWaiters.length > 0) {
        const waiters = this.ackWaiters;
        this.ackWaiters = [];
        for (const w of waiters) w();
      }
    }
    for (const c of msg.cancels) {
      const waiting = this.backlog.findIndex((a) => a.taskId === c.taskId && a.attempt === c.attempt);
      if (waiting >= 0) {
        this.backlog.splice(waiting, 1);
        this.events.finished(c.taskId, c.attempt, { kind: "cancelled", reason: c.reason || "cancelled" });
      } else {
        ex.cancel(c.taskId, c.attempt, c.reason || "cancelled");
      }
    }
    for (const a of msg.assignments) {
      const assignment: Assignment = {
        taskId: a.taskId,
        attempt: a.attempt,
        type: a.type,
        payload: (a.payload ?? {}) as JsonObject,
        timeoutMs: Number(a.timeoutMs),
        traceparent: a.traceparent !== "" ? a.traceparent : undefined,
        tenant: a.tenant,
      };
      // Refused with a free slot means this attempt already runs here: nothing to do.
      if (!ex.start(assignment) && ex.used >= ex.slots) this.backlog.push(assignment);
    }
    if (msg.ping !== undefined) {
      this.active?.out.push(create(WorkerMessageSchema, { pong: { nonce: msg.ping.nonce } }));
    }
  }

  /**
   * Serves one Work stream. The scheduler's first message carries its epoch: older than the newest
   * seen → FAILED_PRECONDITION; otherwise this stream replaces the current one.
   */
  async *serve(requests: AsyncIterable<SchedulerMessage>, signal: AbortSignal): AsyncGenerator<WorkerMessage> {
    if (this.closed) throw new ConnectError("worker is shutting down", Code.Unavailable);
    const it = requests[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done === true) return;
    const epoch = first.value.epoch;
    if (epoch < this.epoch) {
      throw new ConnectError(`stale epoch ${epoch} < ${this.epoch}`, Code.FailedPrecondition);
    }
    const previous = this.active;
    this.epoch = epoch;
    const stream: ActiveStream = { epoch, out: new AsyncQueue<WorkerMessage>() };
    this.active = stream;
    previous?.out.end();
    const ex = this.opts.executor;
    this.log.info({ epoch: String(epoch) }, "scheduler stream opened");
    stream.out.push(
      create(WorkerMessageSchema, {
        hello: {
          workerId: this.opts.workerId,
          slots: ex.slots,
          taskTypes: this.opts.taskTypes(),
          running: this.held(),
          epoch,
        },
      }),
    );
    this.handle(first.value);
    // Every result not acknowledged yet goes (again) on this stream.
    this.pending.results = [...this.unacked.values()];
    this.schedule();

    void (async () => {
      try {
        for (;;) {
          const r = await it.next();
          if (r.done === true) break;
          if (this.active !== stream) break;
          this.handle(r.value);
        }
      } catch (err) {
        if (!signal.aborted) this.log.warn({ err }, "scheduler stream read failed");
      } finally {
        if (this.active === stream) this.active = undefined;
        stream.out.end();
      }
    })();
    const onAbort = (): void => {
      if (this.active === stream) this.active = undefined;
      stream.out.end();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const msg of stream.out) {
        yield msg;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      if (this.active === stream) this.active = undefined;
      this.log.info({ epoch: String(epoch) }, "scheduler stream closed");
    }
  }

  /** Ends the current stream after flushing. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.flush();
    this.active?.out.end();
    this.active = undefined;
  }
}

/** Map key of an attempt. */
function refKey(taskId: string, attempt: number): string {
  return `${taskId}/${attempt}`;
}

function resultMessage(taskId: string, attempt: number, outcome: Outcome): TaskResult {
  switch (outcome.kind) {
    case "succeeded":
      // The common case, built as the message itself (what `create` would make of it).
      return { $typeName: "taskmesh.v1.TaskResult", taskId, attempt, outcome: { case: "result", value: outcome.result }, cancelled: false };
    case "failed":
      return create(TaskResultSchema, {
        taskId,
        attempt,
        outcome: {
          case: "error",
          value: create(TaskErrorSchema, {
            code: outcome.code,
            message: outcome.message,
            retryable: outcome.retryable,
          }),
        },
      });
    case "cancelled":
      return create(TaskResultSchema, {
        taskId,
        attempt,
        cancelled: true,
        outcome: {
          case: "error",
          value: create(TaskErrorSchema, { code: "CANCELLED", message: outcome.reason, retryable: false }),
        },
      });
  }
}

/** Registers WorkerService on a router, served by `session`. */
export function workerRoutes(session: WorkSession): (router: ConnectRouter) => void {
  const impl: Partial<ServiceImpl<typeof WorkerService>> = {
    work: (requests, ctx) => session.serve(requests, ctx.signal),
  };
  return (router) => router.service(WorkerService, impl);
}
