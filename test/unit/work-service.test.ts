import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { SchedulerMessageSchema, type SchedulerMessage, type WorkerMessage } from "../../gen/taskmesh/v1/worker_service_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import { silentLogger } from "../../lib/logger.js";
import { Executor } from "../../services/worker/executor.js";
import type { JsonObject, TaskContext, TaskHandler } from "../../services/worker/handlers.js";
import { WorkSession } from "../../services/worker/work-service.js";

type MessageInit = Parameters<typeof create<typeof SchedulerMessageSchema>>[1];

/** A worker's executor and work session wired as worker.ts wires them, served over in-memory streams. */
function worker(handlers: Record<string, TaskHandler>, slots = 4) {
  let session: WorkSession | undefined;
  const ex = new Executor({
    handlers: new Map(Object.entries(handlers)),
    slots,
    logger: silentLogger(),
    events: {
      accepted: (a) => session?.events.accepted(a),
      progress: (id, att, pct, msg) => session?.events.progress(id, att, pct, msg),
      log: (id, att, line) => session?.events.log(id, att, line),
      finished: (id, att, outcome) => session?.events.finished(id, att, outcome),
    },
  });
  session = new WorkSession({
    workerId: "w1",
    executor: ex,
    taskTypes: () => Object.keys(handlers),
    logger: silentLogger(),
    heartbeatMs: 3_600_000,
  });
  const s = session;
  const aborts: AbortController[] = [];
  /** Opens a scheduler stream with `first` as its first message. */
  const open = (first: MessageInit) => {
    const requests = new AsyncQueue<SchedulerMessage>();
    const abort = new AbortController();
    aborts.push(abort);
    requests.push(create(SchedulerMessageSchema, first));
    const replies = s.serve(requests, abort.signal)[Symbol.asyncIterator]();
    return {
      send: (m: MessageInit) => requests.push(create(SchedulerMessageSchema, m)),
      next: async (): Promise<WorkerMessage> => {
        const r = await replies.next();
        if (r.done === true) throw new Error("stream ended");
        return r.value;
      },
      close: () => requests.end(),
    };
  };
  return { ex, session: s, open, close: () => { s.close(); for (const a of aborts) a.abort(); void ex.close(); } };
}

const assignment = (taskId: string, type: string, payload?: JsonObject) => ({
  taskId,
  attempt: 1,
  type,
  ...(payload !== undefined ? { payload } : {}),
});

let cleanup: (() => void) | undefined;
afterEach(() => {
  cleanup?.();
  cleanup = undefined;
});

describe("WorkSession", () => {
  it("answers a batch of short attempts with one message of results and no accepted reports", async () => {
    const payloads: JsonObject[] = [];
    const w = worker({
      noop: async (payload) => {
        payloads.push(payload);
        return {};
      },
    });
    cleanup = w.close;
    const s = w.open({ epoch: 1n, assignments: [assignment("a", "noop"), assignment("b", "noop"), assignment("c", "noop", { x: 1 })] });
    const hello = await s.next();
    expect(hello.hello?.workerId).toBe("w1");
    const m = await s.next();
    expect(m.accepted).toEqual([]);
    expect(m.results.map((r) => [r.taskId, r.attempt, r.outcome.case])).toEqual([
      ["a", 1, "result"],
      ["b", 1, "result"],
      ["c", 1, "result"],
    ]);
    // A missing payload reaches the handler as {}.
    expect(payloads).toEqual([{}, {}, { x: 1 }]);
    expect(w.session.unackedResults).toBe(3);
  });

  it("reports accepted for an attempt still running at the flush, then its result", async () => {
    let release: (() => void) | undefined;
    const w = worker({
      wait: (_p, ctx: TaskContext) =>
        new Promise((resolve, reject) => {
          release = () => resolve({ done: true });
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason as Error));
        }),
    });
    cleanup = w.close;
    const s = w.open({ epoch: 1n, assignments: [assignment("slow", "wait")] });
    await s.next();
    const m = await s.next();
    expect(m.accepted.map((a) => [a.taskId, a.attempt])).toEqual([["slow", 1]]);
    expect(m.results).toEqual([]);
    release?.();
    const r = await s.next();
    expect(r.accepted).toEqual([]);
    expect(r.results.map((x) => [x.taskId, x.outcome.case, x.outcome.value])).toEqual([["slow", "result", { done: true }]]);
  });

  it("cancels a running attempt on request: its handler's signal fires and the result says cancelled", async () => {
    const w = worker({
      wait: (_p, ctx: TaskContext) =>
        new Promise((_resolve, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason as Error))),
    });
    cleanup = w.close;
    const s = w.open({ epoch: 1n, assignments: [assignment("x", "wait")] });
    await s.next();
    expect((await s.next()).accepted).toHaveLength(1);
    s.send({ epoch: 1n, cancels: [{ taskId: "x", attempt: 1, reason: "no longer needed" }] });
    const r = (await s.next()).results[0];
    expect(r?.cancelled).toBe(true);
    expect(r?.outcome.case === "error" ? r.outcome.value.message : undefined).toBe("no longer needed");
  });

  it("keeps results until acknowledged and sends the rest again on the next stream", async () => {
    const w = worker({ noop: async () => ({}) });
    cleanup = w.close;
    const s1 = w.open({ epoch: 1n, assignments: [assignment("a", "noop"), assignment("b", "noop")] });
    await s1.next();
    expect((await s1.next()).results).toHaveLength(2);
    // Acknowledgements may ride on assignments.
    s1.send({ epoch: 1n, acked: [{ taskId: "a", attempt: 1 }], assignments: [assignment("c", "noop")] });
    expect((await s1.next()).results.map((r) => r.taskId)).toEqual(["c"]);
    expect(w.session.unackedResults).toBe(2);
    // A newer leader's stream replaces this one and gets every unacknowledged result again.
    const s2 = w.open({ epoch: 2n });
    expect((await s2.next()).hello?.epoch).toBe(2n);
    expect((await s2.next()).results.map((r) => r.taskId).sort()).toEqual(["b", "c"]);
    s2.send({ epoch: 2n, acked: [{ taskId: "b", attempt: 1 }, { taskId: "c", attempt: 1 }] });
    await w.session.whenAcked(5_000);
    expect(w.session.unackedResults).toBe(0);
  });
});
