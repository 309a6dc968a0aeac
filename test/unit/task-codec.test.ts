import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { TaskStatus, type Task } from "../../gen/taskmesh/v1/task_pb.js";
import { newTask as storeTask } from "../support/tasks.js";
import {
  applyEvent,
  decodeSpec,
  encodeSpec,
  foldBase,
  foldEvents,
  hashFromFlat,
  impliedEntries,
  parseEventEntry,
  queueTag,
  storedFromNew,
  submitEntry,
  taskFromStored,
  DEFAULT_BACKOFF,
  INLINE_MAX,
  STORED_DEFAULTS,
  type EventEntry,
  type NewTask,
} from "../../services/scheduler/task-codec.js";

const T0 = 1_700_000_000_000;

function newTask(over: Partial<NewTask> = {}): NewTask {
  return storeTask({ id: "01HZX0000000000000000000AA", backoff: { initialMs: 1000, maxMs: 60_000, multiplier: 2, jitter: 0.1 }, ...over });
}

/** Parses entries written the way the Lua scripts write them. */
const entries = (...raw: string[]): EventEntry[] => raw.map(parseEventEntry);

describe("spec encoding", () => {
  it("omits defaults and round-trips every field", () => {
    expect(encodeSpec(newTask())).toBe('{"b":[1000,60000,2,0.1]}');
    // Nothing to store at all for a task with every default.
    expect(encodeSpec(newTask({ backoff: { ...DEFAULT_BACKOFF } }))).toBe("");
    expect(decodeSpec("")).toMatchObject({ backoff: DEFAULT_BACKOFF });
    const t = newTask({
      payload: { a: [1, { b: null }] },
      labels: { env: "prod" },
      timeoutMs: 5000,
      idempotencyKey: "k",
      concurrencyKey: "c",
      concurrencyLimit: 3,
    });
    expect(decodeSpec(encodeSpec(t))).toEqual({
      payload: t.payload,
      labels: t.labels,
      backoff: t.backoff,
      timeoutMs: 5000,
      idempotencyKey: "k",
    });
  });

  it("keeps the concurrency key and limit in the hash, where the scripts read them, not in the spec", () => {
    const t = newTask({ concurrencyKey: "tenant-7", concurrencyLimit: 3 });
    expect(encodeSpec(t)).toBe(encodeSpec(newTask()));
    const s = storedFromNew(t, T0);
    expect(s.hash).toMatchObject({ ck: "tenant-7", cl: "3" });
    expect(taskFromStored(s)).toMatchObject({ concurrencyKey: "tenant-7", concurrencyLimit: 3 });
    // A key without a limit is stored too: such a task counts towards its key while it runs.
    expect(storedFromNew(newTask({ concurrencyKey: "k" }), T0).hash).not.toHaveProperty("cl");
    const plain = storedFromNew(newTask(), T0);
    expect(plain.hash).not.toHaveProperty("ck");
    expect(plain.hash).not.toHaveProperty("cl");
    expect(taskFromStored(plain)).toMatchObject({ concurrencyKey: "", concurrencyLimit: 0 });
  });

  it("reads a missing spec as defaults", () => {
    expect(decodeSpec(null)).toMatchObject({ payload: {}, labels: {}, timeoutMs: 0, idempotencyKey: "", backoff: DEFAULT_BACKOFF });
  });
});

describe("compact hash", () => {
  it("stores a default task in four short fields", () => {
    const s = storedFromNew(newTask({ backoff: { ...DEFAULT_BACKOFF } }), T0);
    expect(s.hash).toEqual({ s: String(TaskStatus.QUEUED), c: String(T0), n: "acme", y: "noop" });
    expect(s.spec).toBeNull();
    expect(s.bigSpec).toBe("");
    const t = taskFromStored(s);
    expect(t).toMatchObject({
      priority: STORED_DEFAULTS.priority,
      maxAttempts: STORED_DEFAULTS.maxAttempts,
      backoff: { multiplier: 2, jitter: 0.2 },
    });
    expect(timestampMs(t.createdAt!)).toBe(T0);
    expect(timestampMs(t.scheduledAt!)).toBe(T0);
    expect(Number(t.resultTtl?.seconds) * 1000).toBe(STORED_DEFAULTS.resultTtlMs);
  });

  it("stores what differs from the defaults, and a long spec outside the hash", () => {
    const s = storedFromNew(newTask({ priority: 4, maxAttempts: 1, resultTtlMs: 5000, affinityKey: "k", payload: { a: 1 } }), T0);
    expect(s.hash).toMatchObject({ p: "4", m: "1", l: "5000", af: "k", d: '{"p":{"a":1},"b":[1000,60000,2,0.1]}' });
    expect(s.bigSpec).toBe("");
    expect(taskFromStored(s)).toMatchObject({ priority: 4, maxAttempts: 1, affinityKey: "k", payload: { a: 1 } });
    const long = storedFromNew(newTask({ payload: { s: "x".repeat(INLINE_MAX) } }), T0);
    expect(long.hash["d"]).toBe("");
    expect(long.bigSpec).toBe(long.spec);
    expect(taskFromStored(long).payload).toEqual({ s: "x".repeat(INLINE_MAX) });
  });

  it("agrees with the Lua scripts on what absent fields mean", () => {
    const lua = (name: string): string => readFileSync(new URL(`../../services/scheduler/lua/${name}.lua`, import.meta.url), "utf8");
    const d = STORED_DEFAULTS;
    expect(lua("lib")).toContain(`local DEF_PRI, DEF_MAX, DEF_TTL = ${d.priority}, ${d.maxAttempts}, ${d.resultTtlMs}\n`);
    const b = DEFAULT_BACKOFF;
    expect(lua("complete")).toContain(`or {${b.initialMs}, ${b.maxMs}, ${b.multiplier}, ${b.jitter}}`);
    expect(lua("complete")).toContain(`local INLINE_MAX = ${INLINE_MAX}\n`);
  });

  it("tags ids with two Crockford characters per queue", () => {
    expect(queueTag("default")).toMatch(/^[0-9A-HJKMNP-TV-Z]{2}$/);
    expect(queueTag("default")).toBe(queueTag("default"));
    const tags = new Set(Array.from({ length: 200 }, (_, i) => queueTag(`q${i}`)));
    expect(tags.size).toBeGreaterThan(150);
  });
});

describe("stored task", () => {
  it("builds a QUEUED task from a new one, or DELAYED when it runs later", () => {
    const queued = taskFromStored(storedFromNew(newTask({ affinityKey: "a", timeoutMs: 2500 }), T0));
    expect(queued.status).toBe(TaskStatus.QUEUED);
    expect(timestampMs(queued.createdAt!)).toBe(T0);
    expect(timestampMs(queued.scheduledAt!)).toBe(T0);
    expect(queued.affinityKey).toBe("a");
    expect(queued.timeout).toMatchObject({ seconds: 2n, nanos: 500_000_000 });
    expect(queued.resultTtl?.seconds).toBe(86_400n);
    expect(queued.payload).toEqual({});
    expect(queued.startedAt).toBeUndefined();

    const delayed = taskFromStored(storedFromNew(newTask({ runAtMs: T0 + 10 }), T0));
    expect(delayed.status).toBe(TaskStatus.DELAYED);
    expect(timestampMs(delayed.scheduledAt!)).toBe(T0 + 10);
    expect(delayed.timeout).toBeUndefined();
  });

  it("reads the mutable fields, result and error", () => {
    const s = storedFromNew(newTask(), T0);
    const t = taskFromStored({
      ...s,
      hash: {
        ...s.hash,
        ...hashFromFlat(["s", "6", "a", "2", "w", "w1", "b", String(T0 + 5), "f", String(T0 + 9), "g", "40", "gm", "hm"]),
        x: '{"code":"E","message":"m","retryable":false}',
      },
      result: '{"x":1}',
    });
    expect(t).toMatchObject({ status: TaskStatus.FAILED, attempt: 2, workerId: "w1", progress: 40, progressMessage: "hm" });
    expect(t.error).toMatchObject({ code: "E", message: "m", retryable: false });
    expect(t.result).toEqual({ x: 1 });
    expect(timestampMs(t.startedAt!)).toBe(T0 + 5);
    expect(timestampMs(t.finishedAt!)).toBe(T0 + 9);
  });
});

describe("event folding", () => {
  const initial = (): Task => taskFromStored(storedFromNew(newTask(), T0));

  it("folds QUEUED → RUNNING → progress → log → SUCCEEDED", () => {
    const current = initial();
    const { events, state } = foldEvents(
      foldBase(current, 1),
      entries(
        `{"n":1,"t":${T0},"k":"s","f":0,"s":1,"a":0,"at":${T0}}`,
        `{"n":2,"t":${T0 + 10},"k":"s","f":1,"s":3,"a":1,"w":"w1"}`,
        `{"n":3,"t":${T0 + 20},"k":"p","a":1,"p":50,"m":"half"}`,
        `{"n":4,"t":${T0 + 25},"k":"l","a":1,"m":"a line"}`,
        `{"n":5,"t":${T0 + 30},"k":"s","f":3,"s":5,"a":1}`,
      ),
      { ok: true },
    );
    expect(events.map((e) => e.task?.status)).toEqual([
      TaskStatus.QUEUED,
      TaskStatus.RUNNING,
      TaskStatus.RUNNING,
      TaskStatus.RUNNING,
      TaskStatus.SUCCEEDED,
    ]);
    expect(events[0]?.task).toEqual(current);
    expect(events.map((e) => e.sequence)).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(events[1]?.event).toMatchObject({ case: "statusChange", value: { from: 1, to: 3, attempt: 1, workerId: "w1" } });
    expect(events[2]?.event).toMatchObject({ case: "progress", value: { attempt: 1, progress: 50, message: "half" } });
    expect(events[2]?.task).toMatchObject({ progress: 50, progressMessage: "half" });
    expect(events[3]?.event).toMatchObject({ case: "log", value: { attempt: 1, line: "a line" } });
    expect(events[1]?.task?.result).toBeUndefined();
    expect(state.result).toEqual({ ok: true });
    expect(timestampMs(state.startedAt!)).toBe(T0 + 10);
    expect(timestampMs(state.finishedAt!)).toBe(T0 + 30);
    expect(state.workerId).toBe("w1");
  });

  it("records retry waits, requeues and retries from the dead-letter set", () => {
    const err = '{"code":"E","message":"m","retryable":true}';
    const { events } = foldEvents(
      foldBase(initial(), 1),
      entries(
        `{"n":1,"t":${T0},"k":"s","f":0,"s":1,"a":0,"at":${T0}}`,
        `{"n":2,"t":${T0 + 1},"k":"s","f":1,"s":3,"a":1,"w":"w1"}`,
        `{"n":3,"t":${T0 + 2},"k":"p","a":1,"p":70,"m":""}`,
        `{"n":4,"t":${T0 + 3},"k":"s","f":3,"s":4,"a":1,"e":${err},"at":${T0 + 1003}}`,
        `{"n":5,"t":${T0 + 1003},"k":"s","f":4,"s":1,"a":1}`,
        `{"n":6,"t":${T0 + 1004},"k":"s","f":1,"s":3,"a":2,"w":"w2"}`,
        `{"n":7,"t":${T0 + 1005},"k":"s","f":3,"s":6,"a":2,"e":{"code":"X","message":"fatal","retryable":false}}`,
        `{"n":8,"t":${T0 + 2000},"k":"s","f":6,"s":1,"a":2,"at":${T0 + 2000}}`,
      ),
      undefined,
    );
    const wait = events[3]?.task;
    expect(wait?.status).toBe(TaskStatus.RETRY_WAIT);
    expect(wait?.error?.code).toBe("E");
    expect(timestampMs(wait!.scheduledAt!)).toBe(T0 + 1003);
    expect(wait?.progress).toBe(70);
    const second = events[5]?.task;
    expect(second).toMatchObject({ attempt: 2, workerId: "w2", progress: 0 });
    expect(second?.error?.code).toBe("E");
    const failed = events[6]?.task;
    expect(failed?.status).toBe(TaskStatus.FAILED);
    expect(timestampMs(failed!.finishedAt!)).toBe(T0 + 1005);
    const retried = events[7]?.task;
    expect(retried?.status).toBe(TaskStatus.QUEUED);
    expect(retried?.finishedAt).toBeUndefined();
    expect(retried?.error?.code).toBe("X");
    expect(retried?.attempt).toBe(2);
    expect(timestampMs(retried!.scheduledAt!)).toBe(T0 + 2000);
  });

  it("clears the error on success and resets progress on a new attempt", () => {
    let s = foldBase(initial(), 1);
    s = applyEvent(s, parseEventEntry(`{"n":1,"t":1,"k":"s","f":3,"s":1,"a":1,"e":{"code":"REQUEUED","message":"lost","retryable":true}}`), undefined);
    expect(s.error?.code).toBe("REQUEUED");
    s = applyEvent(s, parseEventEntry(`{"n":2,"t":2,"k":"p","a":1,"p":10,"m":"x"}`), undefined);
    s = applyEvent(s, parseEventEntry(`{"n":3,"t":3,"k":"s","f":1,"s":3,"a":2,"w":"w"}`), undefined);
    expect(s).toMatchObject({ progress: 0, progressMessage: "" });
    s = applyEvent(s, parseEventEntry(`{"n":4,"t":4,"k":"s","f":3,"s":5,"a":2}`), { r: 1 });
    expect(s.error).toBeUndefined();
    expect(s.result).toEqual({ r: 1 });
  });

  it("seeds a trimmed history from the current state", () => {
    const current = { ...initial(), status: TaskStatus.RUNNING, attempt: 4, workerId: "w" };
    expect(foldBase(current, 7)).toBe(current);
    const pristine = foldBase(current, 1);
    expect(pristine).toMatchObject({ status: TaskStatus.UNSPECIFIED, attempt: 0, workerId: "" });
    expect(pristine.createdAt).toEqual(current.createdAt);
    expect(pristine.payload).toEqual(current.payload);
    const { state } = foldEvents(current, entries(`{"n":7,"t":5,"k":"p","a":4,"p":9}`), undefined);
    expect(state).toMatchObject({ status: TaskStatus.RUNNING, attempt: 4, progress: 9, progressMessage: "" });
  });

  it("rebuilds the submit event from the hash", () => {
    const queued = storedFromNew(newTask(), T0);
    expect(submitEntry(queued.hash)).toEqual({ n: 1, t: T0, k: "s", a: 0, f: 0, s: TaskStatus.QUEUED, at: T0 });
    const delayed = storedFromNew(newTask({ runAtMs: T0 + 50 }), T0);
    const { state } = foldEvents(foldBase(taskFromStored(delayed), 1), [submitEntry(delayed.hash)], undefined);
    expect(state).toEqual(taskFromStored(delayed));
  });

  it("rebuilds the implied claim and end of the current attempt from the hash", () => {
    const base = storedFromNew(newTask(), T0).hash;
    expect(impliedEntries(base)).toEqual([]);
    const running = { ...base, s: "3", a: "1", w: "w1", b: String(T0 + 5), q: "2" };
    const claim: EventEntry = { n: 2, t: T0 + 5, k: "s", a: 1, f: TaskStatus.QUEUED, s: TaskStatus.RUNNING, w: "w1" };
    expect(impliedEntries(running)).toEqual([claim]);
    const done = { ...running, s: "5", f: String(T0 + 9), q: "3" };
    const end: EventEntry = { n: 3, t: T0 + 9, k: "s", a: 1, f: TaskStatus.RUNNING, s: TaskStatus.SUCCEEDED };
    expect(impliedEntries(done)).toEqual([claim, end]);
    // Progress was stored (qe 4): only the end is implied, with its error.
    const failed = { ...running, s: "6", f: String(T0 + 9), q: "5", qe: "4", x: '{"code":"E","message":"m","retryable":false}' };
    expect(impliedEntries(failed)).toEqual([
      { n: 5, t: T0 + 9, k: "s", a: 1, f: TaskStatus.RUNNING, s: TaskStatus.FAILED, e: { code: "E", message: "m", retryable: false } },
    ]);
    expect(impliedEntries({ ...running, qe: "2" })).toEqual([]);
    // Folded after the submit event, they give the stored state.
    const { state } = foldEvents(foldBase(taskFromStored({ ...storedFromNew(newTask(), T0), hash: done }), 1), [submitEntry(done), ...impliedEntries(done)], undefined);
    expect(state).toEqual(taskFromStored({ ...storedFromNew(newTask(), T0), hash: done }));
  });

  it("rejects malformed entries", () => {
    expect(() => parseEventEntry('{"n":1,"t":2,"k":"z"}')).toThrow(/malformed/);
    expect(() => parseEventEntry("not json")).toThrow();
  });
});
