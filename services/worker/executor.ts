import { SpanKind, SpanStatusCode, type Span } from "@opentelemetry/api";
import type { Logger } from "pino";
import { currentTraceparent, tracingEnabled, withSpan } from "../../lib/tracing.js";
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
  /** The tenant that submitted the task ("" when the scheduler did not say). */
  tenant?: string | undefined;
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
  /**
   * Made when the handler first reads `ctx.signal` (most short handlers never do: an AbortSignal
   * costs more than a short handler's whole run); made already aborted if that is after the abort.
   */
  controller: AbortController | undefined;
  /** Set when the attempt is aborted (cancel, timeout, shutdown): the signal's reason. */
  abortReason: TaskFailure | CancelledError | undefined;
  deadline: NodeJS.Timeout | undefined;
  grace: NodeJS.Timeout | undefined;
  /** Set once `finished` has been emitted: later reports of the handler are dropped. */
  done: boolean;
  /** How the attempt ended, once it has. */
  outcome: Outcome | undefined;
}

/** The attempt's AbortSignal, made on first use; already aborted if the attempt was. */
function signalOf(run: Running): AbortSignal {
  let c = run.controller;
  if (c === undefined) {
    c = run.controller = new AbortController();
    if (run.abortReason !== undefined) c.abort(run.abortReason);
  }
  return c.signal;
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
      try {
        this.events.finished(a.taskId, a.attempt, {
          kind: "failed",
          code: "UNKNOWN_TASK_TYPE",
          message: `this worker has no handler for task type ${JSON.stringify(a.type)}`,
          retryable: false,
        });
      } catch (err) {
        this.listenerThrew(err, "finished");
      }
      return true;
    }

    const run: Running = {
      a,
      key,
      controller: undefined,
      abortReason: undefined,
      deadline: undefined,
      grace: undefined,
      done: false,
      outcome: undefined,
    };
    this.runs.set(key, run);
    if (a.timeoutMs > 0) {
      run.deadline = setTimeout(() => this.timedOut(run), a.timeoutMs);
      run.deadline.unref();
    }
    try {
      this.events.accepted(a);
    } catch (err) {
      this.listenerThrew(err, "accepted");
    }
    if (tracingEnabled()) this.runTraced(run, handler);
    else void this.invoke(run, handler, a.traceparent);
    return true;
  }

  /** Runs the handler (on a later microtask: `start` returns before any of its code runs). */
  private async invoke(run: Running, handler: TaskHandler, traceparent: string | undefined): Promise<void> {
    const ctx = this.contextFor(run, traceparent);
    await undefined;
    let value: JsonValue | undefined;
    try {
      value = await handler(run.a.payload, ctx);
    } catch (err) {
      this.settleFailed(run, err);
      return;
    }
    this.settleOk(run, value);
  }

  /**
   * The handler runs inside the attempt's span (a child of the submitter's trace), so its logs
   * and its outgoing calls carry the trace; the span ends when the handler settles.
   */
  private runTraced(run: Running, handler: TaskHandler): void {
    const a = run.a;
    const attributes = { "taskmesh.task.id": a.taskId, "taskmesh.task.attempt": a.attempt, "taskmesh.task.type": a.type };
    void withSpan(
      `task ${a.type}`,
      a.traceparent,
      async (span) => {
        await this.invoke(run, handler, currentTraceparent() ?? a.traceparent);
        if (run.outcome !== undefined) recordOutcome(span, run.outcome);
      },
      { kind: SpanKind.CONSUMER, attributes },
    );
  }

  /** The deadline passed: abort with a retryable TIMEOUT. */
  private timedOut(run: Running): void {
    this.abort(run, new TaskFailure("TIMEOUT", `attempt exceeded its ${run.a.timeoutMs} ms timeout`, true));
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
          if (run.abortReason === undefined) this.abort(run, new CancelledError("shutdown"));
        }
        if (!(await this.waitIdle(this.abortGraceMs))) {
          for (const run of [...this.runs.values()]) this.finish(run, outcomeOfAbort(run.abortReason));
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

  /**
   * The handler's context. Methods and a getter, not arrow properties: this runs once per attempt
   * and must stay cheap (no AbortSignal until the handler asks for one).
   */
  private contextFor(run: Running, traceparent: string | undefined): TaskContext {
    const ex = this;
    const { taskId, attempt } = run.a;
    return {
      taskId,
      attempt,
      tenant: run.a.tenant ?? "",
      get signal(): AbortSignal {
        return signalOf(run);
      },
      traceparent,
      // Reports are also debug lines of the worker's log, written in the handler's context: they
      // carry the attempt's trace id.
      progress(percent: number, message?: string): void {
        if (run.done || typeof percent !== "number" || Number.isNaN(percent)) return;
        const p = Math.min(100, Math.max(0, Math.round(percent)));
        if (ex.debug) ex.log.debug({ taskId, attempt, progress: p, message }, "task progress");
        try {
          ex.events.progress(taskId, attempt, p, message ?? "");
        } catch (err) {
          ex.listenerThrew(err, "progress");
        }
      },
      log(line: string): void {
        if (run.done) return;
        const s = String(line);
        const cut = s.length > MAX_LOG_LINE ? s.slice(0, MAX_LOG_LINE) : s;
        if (ex.debug) ex.log.debug({ taskId, attempt, line: cut }, "task log");
        try {
          ex.events.log(taskId, attempt, cut);
        } catch (err) {
          ex.listenerThrew(err, "log");
        }
      },
    };
  }

  /** Debug lines are built only when the level is on (checked per call: the level may change). */
  private get debug(): boolean {
    return this.log.isLevelEnabled("debug");
  }

  private abort(run: Running, reason: TaskFailure | CancelledError): void {
    if (run.done || run.abortReason !== undefined) return;
    if (run.deadline !== undefined) clearTimeout(run.deadline);
    run.deadline = undefined;
    run.abortReason = reason;
    run.controller?.abort(reason);
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

  /** The handler returned `value`. */
  private settleOk(run: Running, value: JsonValue | undefined): void {
    if (this.settledLate(run)) return;
    this.finish(run, toResult(value));
  }

  /** The handler threw `err`. */
  private settleFailed(run: Running, err: unknown): void {
    if (this.settledLate(run)) return;
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

  /**
   * True if the handler's own outcome no longer counts: the attempt was abandoned (its report is
   * dropped), or aborted (the abort decides the outcome whatever the handler did after).
   */
  private settledLate(run: Running): boolean {
    if (run.done) {
      this.log.debug({ taskId: run.a.taskId, attempt: run.a.attempt }, "late report of an abandoned attempt dropped");
      return true;
    }
    if (run.abortReason !== undefined) {
      this.finish(run, outcomeOfAbort(run.abortReason));
      return true;
    }
    return false;
  }

  private finish(run: Running, outcome: Outcome): void {
    if (run.done) return;
    run.done = true;
    run.outcome = outcome;
    if (run.deadline !== undefined) clearTimeout(run.deadline);
    if (run.grace !== undefined) clearTimeout(run.grace);
    this.runs.delete(run.key);
    try {
      this.events.finished(run.a.taskId, run.a.attempt, outcome);
    } catch (err) {
      this.listenerThrew(err, "finished");
    }
    if (this.runs.size === 0 && this.idleWaiters.length > 0) {
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

  /** A throwing listener must not break the executor's bookkeeping: it is logged and ignored. */
  private listenerThrew(err: unknown, event: keyof ExecutorEvents): void {
    this.log.error({ err, event }, "executor event listener threw");
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

function outcomeOfAbort(reason: TaskFailure | CancelledError | undefined): Outcome {
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
  if (value === undefined || isEmptyPlainObject(value)) return { kind: "succeeded", result: {} };
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

/** A plain object with no enumerable keys: its JSON round trip is `{}`, no need to make it. */
function isEmptyPlainObject(value: JsonValue): boolean {
  if (typeof value !== "object" || value === null || Object.getPrototypeOf(value) !== Object.prototype) return false;
  for (const _ in value) return false;
  return true;
}
