import { describe, expect, it } from "vitest";
import { silentLogger } from "../../lib/logger.js";
import { Executor, type Assignment, type ExecutorEvents, type Outcome } from "../../services/worker/executor.js";
import {
  abortableDelay,
  CancelledError,
  TaskFailure,
  type JsonValue,
  type TaskContext,
  type TaskHandler,
} from "../../services/worker/handlers.js";
import { waitFor } from "../support/wait.js";

interface Recorded {
  accepted: string[];
  progress: { taskId: string; percent: number; message: string }[];
  logs: { taskId: string; line: string }[];
  finished: { taskId: string; attempt: number; outcome: Outcome }[];
}

function recorder(): { events: ExecutorEvents; rec: Recorded } {
  const rec: Recorded = { accepted: [], progress: [], logs: [], finished: [] };
  return {
    rec,
    events: {
      accepted: (a) => rec.accepted.push(`${a.taskId}/${a.attempt}`),
      progress: (taskId, _attempt, percent, message) => rec.progress.push({ taskId, percent, message }),
      log: (taskId, _attempt, line) => rec.logs.push({ taskId, line }),
      finished: (taskId, attempt, outcome) => rec.finished.push({ taskId, attempt, outcome }),
    },
  };
}

/** A handler that waits until released (or aborted, if it listens) and then returns `value`. */
function gate(): { handler: TaskHandler; release: (v?: JsonValue) => void; contexts: TaskContext[] } {
  const waiting: ((v: JsonValue | undefined) => void)[] = [];
  const contexts: TaskContext[] = [];
  return {
    contexts,
    release: (v) => {
      for (const w of waiting.splice(0)) w(v);
    },
    handler: (_payload, ctx) => {
      contexts.push(ctx);
      return new Promise((resolve, reject) => {
        waiting.push(resolve);
        ctx.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")), { once: true });
      });
    },
  };
}

/** A handler that ignores its signal entirely until released. */
function deaf(): { handler: TaskHandler; release: (v: JsonValue) => void; ctx: () => TaskContext } {
  let resolveIt: ((v: JsonValue) => void) | undefined;
  let ctx: TaskContext | undefined;
  return {
    release: (v) => resolveIt?.(v),
    ctx: () => {
      if (ctx === undefined) throw new Error("not started");
      return ctx;
    },
    handler: (_payload, c) => {
      ctx = c;
      return new Promise((resolve) => (resolveIt = resolve));
    },
  };
}

function task(taskId: string, type: string, over: Partial<Assignment> = {}): Assignment {
  return { taskId, attempt: 1, type, payload: {}, timeoutMs: 0, ...over };
}

function executor(handlers: Record<string, TaskHandler>, slots = 2, abortGraceMs = 2000) {
  const { events, rec } = recorder();
  const ex = new Executor({ handlers: new Map(Object.entries(handlers)), slots, abortGraceMs, events, logger: silentLogger() });
  return { ex, rec };
}

const outcomeOf = async (rec: Recorded, taskId: string): Promise<Outcome> =>
  (await waitFor(() => rec.finished.find((f) => f.taskId === taskId), { what: `${taskId} finished` })).outcome;

describe("Executor", () => {
  it("runs a handler and reports accepted, progress, logs and the result", async () => {
    const { ex, rec } = executor({
      work: async (payload, ctx) => {
        ctx.progress(-5);
        ctx.progress(42.6, "halfway");
        ctx.progress(250);
        ctx.log("hello");
        return { got: payload["x"] ?? null, at: new Date(0) as unknown as JsonValue };
      },
    });
    expect(ex.start({ ...task("a", "work"), payload: { x: 1 } })).toBe(true);
    expect(rec.accepted).toEqual(["a/1"]);
    expect(await outcomeOf(rec, "a")).toEqual({ kind: "succeeded", result: { got: 1, at: "1970-01-01T00:00:00.000Z" } });
    expect(rec.progress.map((p) => [p.percent, p.message])).toEqual([
      [0, ""],
      [43, "halfway"],
      [100, ""],
    ]);
    expect(rec.logs).toEqual([{ taskId: "a", line: "hello" }]);
    expect(ex.used).toBe(0);
  });

  it("wraps non-object results and maps undefined to {}", async () => {
    const { ex, rec } = executor({ num: async () => 7, none: async () => undefined, list: async () => [1, 2] }, 3);
    ex.start(task("n", "num"));
    ex.start(task("u", "none"));
    ex.start(task("l", "list"));
    expect(await outcomeOf(rec, "n")).toEqual({ kind: "succeeded", result: { value: 7 } });
    expect(await outcomeOf(rec, "u")).toEqual({ kind: "succeeded", result: {} });
    expect(await outcomeOf(rec, "l")).toEqual({ kind: "succeeded", result: { value: [1, 2] } });
  });

  it("fails a result that cannot become JSON with INVALID_RESULT", async () => {
    const { ex, rec } = executor({ big: async () => ({ n: 1n }) as unknown as JsonValue });
    ex.start(task("b", "big"));
    expect(await outcomeOf(rec, "b")).toMatchObject({ kind: "failed", code: "INVALID_RESULT", retryable: false });
  });

  it("maps TaskFailure to its code and other errors to a retryable HANDLER_ERROR without stack", async () => {
    const { ex, rec } = executor({
      coded: async () => {
        throw new TaskFailure("BAD_THING", "nope", false);
      },
      plain: async () => {
        throw new Error("kaput");
      },
      sync: (() => {
        throw new Error("thrown synchronously");
      }) as TaskHandler,
    }, 3);
    ex.start(task("c", "coded"));
    ex.start(task("p", "plain"));
    ex.start(task("s", "sync"));
    expect(await outcomeOf(rec, "c")).toEqual({ kind: "failed", code: "BAD_THING", message: "nope", retryable: false });
    expect(await outcomeOf(rec, "p")).toEqual({ kind: "failed", code: "HANDLER_ERROR", message: "kaput", retryable: true });
    expect(await outcomeOf(rec, "s")).toEqual({
      kind: "failed",
      code: "HANDLER_ERROR",
      message: "thrown synchronously",
      retryable: true,
    });
  });

  it("fails an unknown task type at once without taking a slot", () => {
    const { ex, rec } = executor({});
    expect(ex.start(task("x", "nope"))).toBe(true);
    expect(rec.finished).toEqual([
      { taskId: "x", attempt: 1, outcome: expect.objectContaining({ kind: "failed", code: "UNKNOWN_TASK_TYPE", retryable: false }) },
    ]);
    expect(rec.accepted).toEqual([]);
    expect(ex.used).toBe(0);
  });

  it("refuses work beyond its slots and a duplicate attempt, and frees slots when attempts end", async () => {
    const g = gate();
    const { ex, rec } = executor({ wait: g.handler }, 2);
    expect(ex.start(task("a", "wait"))).toBe(true);
    expect(ex.start(task("a", "wait"))).toBe(false);
    expect(ex.start(task("a", "wait", { attempt: 2 }))).toBe(true);
    expect(ex.start(task("b", "wait"))).toBe(false);
    expect(ex.used).toBe(2);
    expect(ex.running()).toEqual([
      { taskId: "a", attempt: 1 },
      { taskId: "a", attempt: 2 },
    ]);
    expect(rec.accepted).toEqual(["a/1", "a/2"]);
    await waitFor(() => g.contexts.length === 2);
    g.release({ ok: true });
    await waitFor(() => rec.finished.length === 2);
    expect(ex.used).toBe(0);
    expect(ex.start(task("b", "wait"))).toBe(true);
    ex.setSlots(1);
    expect(ex.slots).toBe(1);
    expect(ex.start(task("c", "wait"))).toBe(false);
    await waitFor(() => g.contexts.length === 3);
    g.release();
    await outcomeOf(rec, "b");
  });

  it("fires the signal with a TIMEOUT TaskFailure at the deadline, and the attempt fails TIMEOUT", async () => {
    const g = gate();
    const { ex, rec } = executor({ wait: g.handler });
    ex.start(task("t", "wait", { timeoutMs: 50 }));
    await waitFor(() => g.contexts.length === 1);
    const outcome = await outcomeOf(rec, "t");
    // The handler rejected with an AbortError; the outcome is still TIMEOUT, retryable.
    expect(outcome).toMatchObject({ kind: "failed", code: "TIMEOUT", retryable: true });
    const reason: unknown = g.contexts[0]?.signal.reason;
    expect(reason).toBeInstanceOf(TaskFailure);
    expect((reason as TaskFailure).code).toBe("TIMEOUT");
    expect(ex.used).toBe(0);
  });

  it("fails a handler that ignores its signal at deadline + grace and frees its slot", async () => {
    const d = deaf();
    const { ex, rec } = executor({ deaf: d.handler }, 1, 100);
    const started = Date.now();
    ex.start(task("d", "deaf", { timeoutMs: 50 }));
    const outcome = await outcomeOf(rec, "d");
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(outcome).toMatchObject({ kind: "failed", code: "TIMEOUT", retryable: true });
    expect(ex.used).toBe(0);
    expect(ex.start(task("e", "deaf"))).toBe(true);
  });

  it("drops progress and results an abandoned handler reports after its attempt ended", async () => {
    const d = deaf();
    const { ex, rec } = executor({ deaf: d.handler }, 1, 30);
    ex.start(task("d", "deaf", { timeoutMs: 20 }));
    await outcomeOf(rec, "d");
    const ctx = d.ctx();
    ctx.progress(90, "too late");
    ctx.log("too late");
    d.release({ late: true });
    await new Promise((r) => setImmediate(r));
    expect(rec.finished).toHaveLength(1);
    expect(rec.progress).toEqual([]);
    expect(rec.logs).toEqual([]);
  });

  it("cancels a running attempt: the signal fires with a CancelledError and the outcome is cancelled", async () => {
    const g = gate();
    const { ex, rec } = executor({ wait: g.handler });
    ex.start(task("c", "wait"));
    await waitFor(() => g.contexts.length === 1);
    expect(ex.cancel("c", 2, "wrong attempt")).toBe(false);
    expect(ex.cancel("c", 1, "user asked")).toBe(true);
    expect(await outcomeOf(rec, "c")).toEqual({ kind: "cancelled", reason: "user asked" });
    expect(g.contexts[0]?.signal.reason).toBeInstanceOf(CancelledError);
    expect(ex.cancel("c", 1, "again")).toBe(false);
    expect(rec.finished).toHaveLength(1);
  });

  it("reports cancelled even when the handler completes after the cancel", async () => {
    const d = deaf();
    const { ex, rec } = executor({ deaf: d.handler });
    ex.start(task("c", "deaf"));
    await waitFor(() => d.ctx());
    ex.cancel("c", 1, "stop");
    d.release({ done: true });
    expect(await outcomeOf(rec, "c")).toEqual({ kind: "cancelled", reason: "stop" });
  });

  it("gives a handler that reads its signal only after an abort one already aborted, with the reason", async () => {
    const d = deaf();
    const { ex, rec } = executor({ deaf: d.handler }, 1, 30);
    ex.start(task("c", "deaf"));
    await waitFor(() => d.ctx());
    expect(ex.cancel("c", 1, "user asked")).toBe(true);
    const signal = d.ctx().signal;
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBeInstanceOf(CancelledError);
    expect((signal.reason as CancelledError).reason).toBe("user asked");
    expect(d.ctx().signal).toBe(signal);
    expect(await outcomeOf(rec, "c")).toEqual({ kind: "cancelled", reason: "user asked" });
  });

  it("fires a signal read before the abort, once, and the same one on every read", async () => {
    const g = gate();
    const { ex, rec } = executor({ wait: g.handler });
    ex.start(task("t", "wait", { timeoutMs: 30 }));
    await waitFor(() => g.contexts.length === 1);
    const ctx = g.contexts[0] as TaskContext;
    expect(ctx.signal).toBe(ctx.signal);
    expect(ctx.signal.aborted).toBe(false);
    let fired = 0;
    ctx.signal.addEventListener("abort", () => fired++);
    expect(await outcomeOf(rec, "t")).toMatchObject({ kind: "failed", code: "TIMEOUT" });
    expect(fired).toBe(1);
    expect(ctx.signal.aborted).toBe(true);
  });

  it("keeps the context's fields when a handler spreads it", async () => {
    let seen: Partial<TaskContext> = {};
    const { ex, rec } = executor({
      spread: async (_p, ctx) => {
        seen = { ...ctx };
        return {};
      },
    });
    ex.start(task("s", "spread", { attempt: 3, traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }));
    await outcomeOf(rec, "s");
    expect(seen.taskId).toBe("s");
    expect(seen.attempt).toBe(3);
    expect(seen.traceparent).toBe("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    expect(seen.signal).toBeInstanceOf(AbortSignal);
    expect(typeof seen.progress).toBe("function");
    expect(typeof seen.log).toBe("function");
  });

  it("reports an empty object result as {} and keeps what JSON makes of others", async () => {
    class WithToJson {
      toJSON(): JsonValue {
        return { made: true };
      }
    }
    const { ex, rec } = executor({
      empty: async () => ({}),
      dated: async () => new WithToJson() as unknown as JsonValue,
      nested: async () => ({ a: undefined, b: [undefined] }) as unknown as JsonValue,
    }, 3);
    ex.start(task("e", "empty"));
    ex.start(task("d", "dated"));
    ex.start(task("n", "nested"));
    expect(await outcomeOf(rec, "e")).toEqual({ kind: "succeeded", result: {} });
    expect(await outcomeOf(rec, "d")).toEqual({ kind: "succeeded", result: { made: true } });
    expect(await outcomeOf(rec, "n")).toEqual({ kind: "succeeded", result: { b: [null] } });
  });

  it("drain waits for running attempts and then refuses new work", async () => {
    const { ex, rec } = executor({
      short: async (_p, ctx) => {
        await abortableDelay(30, ctx.signal);
        return { ok: true };
      },
    });
    ex.start(task("s", "short"));
    await ex.drain(5_000);
    expect(rec.finished).toEqual([{ taskId: "s", attempt: 1, outcome: { kind: "succeeded", result: { ok: true } } }]);
    expect(ex.start(task("t", "short"))).toBe(false);
    await ex.drain(5_000);
  });

  it("drain aborts what outlives the grace period as cancelled 'shutdown', abandoning deaf handlers", async () => {
    const g = gate();
    const d = deaf();
    const { ex, rec } = executor({ wait: g.handler, deaf: d.handler }, 2, 50);
    ex.start(task("g", "wait"));
    ex.start(task("d", "deaf"));
    await waitFor(() => g.contexts.length === 1 && d.ctx());
    await ex.drain(20);
    expect(rec.finished.map((f) => [f.taskId, f.outcome]).sort()).toEqual([
      ["d", { kind: "cancelled", reason: "shutdown" }],
      ["g", { kind: "cancelled", reason: "shutdown" }],
    ]);
    expect(ex.used).toBe(0);
    await ex.close();
  });

  it("keeps its bookkeeping when an event listener throws", async () => {
    const { events, rec } = recorder();
    const ex = new Executor({
      handlers: new Map<string, TaskHandler>([["noop", async () => ({})]]),
      slots: 1,
      events: {
        ...events,
        accepted: () => {
          throw new Error("listener bug");
        },
      },
      logger: silentLogger(),
    });
    expect(ex.start(task("n", "noop"))).toBe(true);
    expect(await outcomeOf(rec, "n")).toEqual({ kind: "succeeded", result: {} });
    expect(ex.used).toBe(0);
  });
});
