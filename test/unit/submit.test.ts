import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { jsonDepth } from "../../lib/task-types.js";
import { Priority, SubmitTaskRequestSchema } from "../../gen/taskmesh/v1/task_pb.js";
import { DEFAULT_SUBMIT, taskIdFactory, toNewTask } from "../../services/scheduler/submit.js";
import { queueTag } from "../../services/scheduler/task-codec.js";

const known = new Set(["noop", "sleep"]);
const now = 1_800_000_000_000;
const req = (init: Parameters<typeof create<typeof SubmitTaskRequestSchema>>[1]) => create(SubmitTaskRequestSchema, init);

function invalid(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    return (err as ConnectError).rawMessage;
  }
  throw new Error("expected INVALID_ARGUMENT");
}

describe("toNewTask", () => {
  it("fills defaults for an empty request", () => {
    const t = toNewTask(req({ type: "noop" }), "acme", known, DEFAULT_SUBMIT, now);
    expect(t).toMatchObject({
      tenant: "acme",
      type: "noop",
      queue: "default",
      priority: 2,
      maxAttempts: 3,
      runAtMs: 0,
      resultTtlMs: 24 * 3600 * 1000,
      payload: {},
    });
    expect(t.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
  });

  it("gives time-sortable ids", () => {
    const ids = Array.from({ length: 100 }, () => toNewTask(req({ type: "noop" }), "t", known, DEFAULT_SUBMIT, now).id);
    expect([...ids].sort()).toEqual(ids);
  });

  it("ends every id with its queue's tag, and starts it with the time like a ULID", () => {
    const t = toNewTask(req({ type: "noop", queue: "emails" }), "t", known, DEFAULT_SUBMIT, now);
    expect(t.id.endsWith(queueTag("emails"))).toBe(true);
    const next = taskIdFactory(() => 0);
    const a = next("default", now);
    // 10 characters of milliseconds (Crockford base 32), then randomness, then the tag.
    const decoded = [...a.slice(0, 10)].reduce((v, ch) => v * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".indexOf(ch), 0);
    expect(decoded).toBe(now);
    expect(a).toBe(`${a.slice(0, 10)}${"0".repeat(14)}${queueTag("default")}`);
    // Same millisecond (or a clock going back): the random part goes up by one.
    expect(next("other", now)).toBe(`${a.slice(0, 10)}${"0".repeat(13)}1${queueTag("other")}`);
    expect(next("default", now - 5)).toBe(`${a.slice(0, 10)}${"0".repeat(13)}2${queueTag("default")}`);
    const later = next("default", now + 1);
    expect(later > a).toBe(true);
    expect(later.slice(0, 10)).not.toBe(a.slice(0, 10));
  });

  it("maps priorities and turns delay and run_at into a run time", () => {
    expect(toNewTask(req({ type: "noop", priority: Priority.CRITICAL }), "t", known, DEFAULT_SUBMIT, now).priority).toBe(4);
    expect(toNewTask(req({ type: "noop", priority: Priority.LOW }), "t", known, DEFAULT_SUBMIT, now).priority).toBe(1);
    expect(toNewTask(req({ type: "noop", delay: durationFromMs(1500) }), "t", known, DEFAULT_SUBMIT, now).runAtMs).toBe(now + 1500);
    expect(toNewTask(req({ type: "noop", runAt: timestampFromMs(now + 9000) }), "t", known, DEFAULT_SUBMIT, now).runAtMs).toBe(now + 9000);
    expect(toNewTask(req({ type: "noop", runAt: timestampFromMs(now - 9000) }), "t", known, DEFAULT_SUBMIT, now).runAtMs).toBe(0);
  });

  it("names the offending field, with the batch path", () => {
    expect(invalid(() => toNewTask(req({}), "t", known, DEFAULT_SUBMIT, now))).toMatch(/^type: is required/);
    expect(invalid(() => toNewTask(req({ type: "zzz" }), "t", known, DEFAULT_SUBMIT, now, "tasks[7]."))).toMatch(/^tasks\[7\]\.type: unknown/);
    expect(invalid(() => toNewTask(req({ type: "noop", queue: "a{b}" }), "t", known, DEFAULT_SUBMIT, now))).toMatch(/^queue:/);
    expect(invalid(() => toNewTask(req({ type: "noop", priority: 9 as Priority }), "t", known, DEFAULT_SUBMIT, now))).toMatch(/^priority:/);
    expect(invalid(() => toNewTask(req({ type: "noop", maxAttempts: -1 }), "t", known, DEFAULT_SUBMIT, now))).toMatch(/^max_attempts:/);
    expect(
      invalid(() => toNewTask(req({ type: "noop", delay: durationFromMs(5), runAt: timestampFromMs(now) }), "t", known, DEFAULT_SUBMIT, now)),
    ).toMatch(/^run_at:/);
    expect(
      invalid(() => toNewTask(req({ type: "noop", backoff: { multiplier: 0.5 } }), "t", known, DEFAULT_SUBMIT, now)),
    ).toMatch(/^backoff\.multiplier:/);
    expect(
      invalid(() => toNewTask(req({ type: "noop", payload: { s: "x".repeat(DEFAULT_SUBMIT.maxPayloadBytes) } }), "t", known, DEFAULT_SUBMIT, now)),
    ).toMatch(/^payload: is \d+ bytes/);
    expect(invalid(() => toNewTask(req({ type: "noop", labels: { "bad key": "v" } }), "t", known, DEFAULT_SUBMIT, now))).toMatch(/^labels\["bad key"\]/);
    // Nesting: 32 levels of objects and arrays are fine, 33 are refused naming the payload.
    const nested = (depth: number): JsonObject => {
      let v: JsonValue = 1;
      for (let i = 0; i < depth - 1; i++) v = i % 2 === 0 ? [v] : { a: v };
      return { x: v };
    };
    expect(jsonDepth(nested(32), 100)).toBe(32);
    expect(toNewTask(req({ type: "noop", payload: nested(32) }), "t", known, DEFAULT_SUBMIT, now).payload).toEqual(nested(32));
    expect(invalid(() => toNewTask(req({ type: "noop", payload: nested(33) }), "t", known, DEFAULT_SUBMIT, now))).toMatch(/^payload: nests objects and arrays more than 32 levels/);
  });

  it("measures JSON nesting without walking past the bound", () => {
    expect(jsonDepth(1, 10)).toBe(0);
    expect(jsonDepth({}, 10)).toBe(1);
    expect(jsonDepth({ a: [1, { b: [] }] }, 10)).toBe(4);
    let deep: JsonValue = 0;
    for (let i = 0; i < 100_000; i++) deep = [deep];
    // A bound keeps it from recursing 100,000 levels (and from a stack overflow).
    expect(jsonDepth(deep, 41)).toBe(41);
  });
});
