import { SpanKind, SpanStatusCode, type Span } from "@opentelemetry/api";
import type { Logger } from "pino";
import { currentTraceparent, withSpan } from "../../lib/tracing.js";
import { CancelledError, TaskFailure, type JsonObject, type JsonValue, type TaskContext, type TaskHandler } from "./task-api.js";

/** One attempt of a task, as the scheduler hands it over. */
export interface Assignment {
  taskId: string;
  attempt: number;
  type: string;
  payload: JsonObject;
  /** Execution limit in milliseconds; 0 (or less) means none. */
  timeoutMs: number;
  /** W3C traceparent of the request that submitted the task: the attempt's span is its child. */
  traceparent?: string | undefined;
}

/** How an attempt ended. */
export type Outcome =
  | { kind: "succeeded"; result: JsonObject }
  | { kind: "failed"; code: string; message: string; retryable: boolean }
  | { kind: "cancelled"; reason: string };

/** What the executor reports; the stream layer turns these into WorkerMessages. */
export interface ExecutorEvents {
  /** An attempt was started (emitted synchronously inside `start`). */
  accepted(a: Assignment): void;
  /** The handler reported progress (0..100, integer). */
  progress(taskId: string, attempt: number, percent: number, message: string): void;
  /** The handler logged a line. */
  log(taskId: string, attempt: number, line: string): void;
  /** The attempt ended; emitted exactly once per started attempt. */
  finished(taskId: string, attempt: number, outcome: Outcome): void;
}

/** Options for {@link Executor}. */
export interface ExecutorOptions {
  /** Task type → handler. */
  handlers: Map<string, TaskHandler>;
  /** How many attempts may run at once. */
  slots: number;
  /**
   * How long after the deadline (or a cancel) a handler that ignores its AbortSignal is given
   * before its attempt is ended anyway and its slot freed. @default 2000
   */
  abortGraceMs?: number;
  /** Receives the reports. */
  events: ExecutorEvents;
  /** Parent logger; the executor takes a child. */
  logger: Logger;
}

/** Longest log line passed on; longer ones are cut (the event stream is capped anyway). */
export const MAX_LOG_LINE = 8192;

type ExecutorState = "running" | "draining" | "stopped";

interface Running {
  readonly a: Assignment;
  readonly key: string;
  readonly controller: AbortController;
  deadline: NodeJS.Timeout | undefined;
  grace: NodeJS.Timeout | undefined;
  /** Set once `finished` has been emitted: later reports of the handler are dropped. */
  done: boolean;
  /** How the attempt ended, once it has. */
  outcome?: Outcome;
}

const keyOf = (taskId: string, attempt: number): string => `${taskId}\u0000${attempt}`;

/**
 * Runs task attempts in a fixed number of slots. Each attempt gets an AbortSignal that fires on
 * cancel, timeout or shutdown; a handler that ignores it is abandoned after `abortGraceMs` (its
 * slot freed, its late reports dropped). Every started attempt ends with exactly one `finished`.
 */
export class Executor {
  private readonly handlers: Map<string, TaskHandler>;
  private readonly events: ExecutorEvents;
  private readonly log: Logger;
  private readonly abortGraceMs: number;
  private slotCount: number;
  private readonly runs = new Map<string, Running>();
  private idleWaiters: (() => void)[] = [];
  private state: ExecutorState = "running";
  private draining: Promise<void> | undefined;

  constructor(opts: ExecutorOptions) {
    this.handlers = opts.handlers;
    this.events = opts.events;
    this.log = opts.logger.child({ component: "executor" });
    this.abortGraceMs = opts.abortGraceMs ?? 2000;
    this.slotCount = checkSlots(opts.slots);
  }

  /** Number of slots. */
  get slots(): number {
    return this.slotCount;
  }

  /** Slots taken by running attempts. */
  get used(): number {
    return this.runs.size;
  }

  /** Changes the number of slots; running attempts above a lowered limit run to completion. */
  setSlots(n: number): void {
    this.slotCount = checkSlots(n);
  }

  /** The attempts holding a slot. */
  running(): { taskId: string; attempt: number }[] {
    return [...this.runs.values()].map((r) => ({ taskId: r.a.taskId, attempt: r.a.attempt }));
  }

  /**
   * Starts the attempt if a slot is free; returns false (and does nothing) if all slots are busy,
   * the same (taskId, attempt) already runs, or the executor is draining. Unknown type →
   * finished(failed UNKNOWN_TASK_TYPE, retryable false) at once, taking no slot (returns true).
   */
  start(a: Assignment): boolean {
    if (this.state !== "running") return false;
    const key = keyOf(a.taskId, a.attempt);
    if (this.runs.has(key) || this.runs.size >= this.slotCount) return false;
    const handler = this.handlers.get(a.type);
    if (handler === undefined) {
      this.emit("finished", () =>
        this.events.finished(a.taskId, a.attempt, {
          kind: "failed",
          code: "UNKNOWN_TASK_TYPE",
          message: `this worker has no handler for task type ${JSON.stringify(a.type)}`,
          retryable: false,
        }),
      );
      return true;
    }

    const run: Running = { a, key, controller: new AbortController(), deadline: undefined, grace: undefined, done: false };
    this.runs.set(key, run);
    if (a.timeoutMs > 0) {
      run.deadline = setTimeout(() => {
        this.abort(run, new TaskFailure("TIMEOUT", `attempt exceeded its ${a.timeoutMs} ms timeout`, true));
      }, a.timeoutMs);
      run.deadline.unref();
    }
    this.emit("accepted", () => this.events.accepted(a));

    // The handler runs inside the attempt's span (a child of the submitter's trace), so its logs
    // and its outgoing calls carry the trace; the span ends when the handler settles.
    const attributes = { "taskmesh.task.id": a.taskId, "taskmesh.task.attempt": a.attempt, "taskmesh.task.type": a.type };
    void withSpan(
      `task ${a.type}`,
      a.traceparent,
      async (span) => {
        const ctx = this.contextFor(run, currentTraceparent() ?? a.traceparent);
        // The handler starts on a later microtask: `start` returns before any of its code runs.
        await Promise.resolve();
        let r: { ok: true; value: JsonValue | undefined } | { ok: false; err: unknown };
        try {
          r = { ok: true, value: await handler(a.payload, ctx) };
        } catch (err) {
          r = { ok: false, err };
        }
        this.settle(run, r);
        if (run.outcome !== undefined) recordOutcome(span, run.outcome);
      },
      { kind: SpanKind.CONSUMER, attributes },
    );
    return true;
  }

  /**
   * Aborts a running attempt (its AbortSignal fires with a CancelledError); its outcome becomes
   * cancelled unless it already finished. Returns false if not running.
   */
  cancel(taskId: string, attempt: number, reason: string): boolean {
    const run = this.runs.get(keyOf(taskId, attempt));
    if (run === undefined || run.done) return false;
    this.abort(run, new CancelledError(reason));
    return true;
  }

  /**
   * Stop accepting; wait for running attempts up to graceMs; then abort the rest (they end
   * cancelled with reason "shutdown") and wait for them up to abortGraceMs, after which any
   * still running are reported cancelled anyway. Calling it again returns the same promise.
   */
  drain(graceMs: number): Promise<void> {
    this.draining ??= (async () => {
      this.state = "draining";
      if (!(await this.waitIdle(graceMs))) {
        for (const run of this.runs.values()) {
          if (!run.controller.signal.aborted) this.abort(run, new CancelledError("shutdown"));
        }
        if (!(await this.waitIdle(this.abortGraceMs))) {
          for (const run of [...this.runs.values()]) this.finish(run, outcomeOfAbort(run.controller.signal.reason));
        }
      }
      this.state = "stopped";
    })();
    return this.draining;
  }

  /** Drains without grace: aborts everything running. Idempotent. */
  close(): Promise<void> {
    return this.drain(0);
  }

  private contextFor(run: Running, traceparent: string | undefined): TaskContext {
    const { taskId, attempt } = run.a;
    return {
      taskId,
      attempt,
      signal: run.controller.signal,
      traceparent,
      // Reports are also debug lines of the worker's log, written in the handler's context: they
      // carry the attempt's trace id.
      progress: (percent: number, message?: string): void => {
        if (run.done || typeof percent !== "number" || Number.isNaN(percent)) return;
        const p = Math.min(100, Math.max(0, Math.round(percent)));
        this.log.debug({ taskId, attempt, progress: p, message }, "task progress");
        this.emit("progress", () => this.events.progress(taskId, attempt, p, message ?? ""));
      },
      log: (line: string): void => {
        if (run.done) return;
        const s = String(line);
        const cut = s.length > MAX_LOG_LINE ? s.slice(0, MAX_LOG_LINE) : s;
        this.log.debug({ taskId, attempt, line: cut }, "task log");
        this.emit("log", () => this.events.log(taskId, attempt, cut));
      },
    };
  }

  private abort(run: Running, reason: TaskFailure | CancelledError): void {
    if (run.done || run.controller.signal.aborted) return;
    if (run.deadline !== undefined) clearTimeout(run.deadline);
    run.deadline = undefined;
    run.controller.abort(reason);
    run.grace = setTimeout(() => {
      if (run.done) return;
      this.log.warn(
        { taskId: run.a.taskId, attempt: run.a.attempt, type: run.a.type, graceMs: this.abortGraceMs },
        "handler ignored its abort signal; attempt abandoned",
      );
      this.finish(run, outcomeOfAbort(reason));
    }, this.abortGraceMs);
    run.grace.unref();
  }

  private settle(run: Running, r: { ok: true; value: JsonValue | undefined } | { ok: false; err: unknown }): void {
    if (run.done) {
      this.log.debug({ taskId: run.a.taskId, attempt: run.a.attempt }, "late report of an abandoned attempt dropped");
      return;
    }
    // Once aborted, the abort decides the outcome whatever the handler did after.
    const signal = run.controller.signal;
    if (signal.aborted) {
      this.finish(run, outcomeOfAbort(signal.reason));
      return;
    }
    if (r.ok) {
      this.finish(run, toResult(r.value));
      return;
    }
    const err = r.err;
    if (TaskFailure.is(err)) {
      this.finish(run, { kind: "failed", code: err.code, message: err.message, retryable: err.retryable });
    } else {
      this.finish(run, {
        kind: "failed",
        code: "HANDLER_ERROR",
        message: err instanceof Error ? err.message : String(err),
        retryable: true,
      });
    }
  }

  private finish(run: Running, outcome: Outcome): void {
    if (run.done) return;
    run.done = true;
    run.outcome = outcome;
    if (run.deadline !== undefined) clearTimeout(run.deadline);
    if (run.grace !== undefined) clearTimeout(run.grace);
    this.runs.delete(run.key);
    this.emit("finished", () => this.events.finished(run.a.taskId, run.a.attempt, outcome));
    if (this.runs.size === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Resolves true when nothing runs, or false after `ms`. */
  private waitIdle(ms: number): Promise<boolean> {
    if (this.runs.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter);
        resolve(false);
      }, ms);
      timer.unref();
      this.idleWaiters.push(waiter);
    });
  }

  /** Calls a listener, so that a throwing listener cannot break the executor's bookkeeping. */
  private emit(event: keyof ExecutorEvents, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err, event }, "executor event listener threw");
    }
  }
}

function checkSlots(n: number): number {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`slots must be a non-negative integer, got ${n}`);
  return n;
}

/** Puts an attempt's outcome on its span: failures and cancellations get status ERROR. */
function recordOutcome(span: Span, outcome: Outcome): void {
  span.setAttribute("taskmesh.task.outcome", outcome.kind);
  switch (outcome.kind) {
    case "succeeded":
      return;
    case "failed":
      span.setAttribute("taskmesh.task.error_code", outcome.code);
      span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.code });
      return;
    case "cancelled":
      span.setStatus({ code: SpanStatusCode.ERROR, message: "CANCELLED" });
      return;
  }
}

function outcomeOfAbort(reason: unknown): Outcome {
  if (reason instanceof CancelledError) return { kind: "cancelled", reason: reason.reason };
  if (TaskFailure.is(reason)) return { kind: "failed", code: reason.code, message: reason.message, retryable: reason.retryable };
  return { kind: "cancelled", reason: "aborted" };
}

/**
 * Turns a handler's return value into a Struct-ready object: undefined → `{}`, a non-object is
 * wrapped as `{ value }`. A JSON round trip drops what JSON cannot hold (undefined fields,
 * functions) and applies `toJSON` (Dates become strings); what cannot be serialised at all
 * (cycles, BigInt) fails the attempt with INVALID_RESULT, not retried.
 */
function toResult(value: JsonValue | undefined): Outcome {
  if (value === undefined) return { kind: "succeeded", result: {} };
  let json: unknown;
  try {
    const text = JSON.stringify(value);
    json = text === undefined ? null : JSON.parse(text);
  } catch (err) {
    return {
      kind: "failed",
      code: "INVALID_RESULT",
      message: `result is not JSON-serialisable: ${err instanceof Error ? err.message : String(err)}`,
      retryable: false,
    };
  }
  if (typeof json === "object" && json !== null && !Array.isArray(json)) {
    return { kind: "succeeded", result: json as JsonObject };
  }
  return { kind: "succeeded", result: { value: json as JsonValue } };
}
