import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  checkCron,
  checkTimeZone,
  firstRun,
  followingRun,
  specFromRequest,
  type ScheduleSpec,
} from "../../services/scheduler/schedules.js";

const at = (iso: string): number => Date.parse(iso);
const iso = (ms: number | undefined): string => (ms === undefined ? "never" : new Date(ms).toISOString());

/** Runs a schedule the way the ticker does (each tick fired exactly when due) and lists the ticks. */
function runs(spec: ScheduleSpec, fromMs: number, untilMs: number): string[] {
  const out: string[] = [];
  let next = firstRun(spec, fromMs);
  while (next !== undefined && next < untilMs) {
    out.push(iso(next));
    next = followingRun(spec, next, next);
  }
  return out;
}

function expectInvalid(fn: () => unknown, field: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).rawMessage.startsWith(`${field}:`)).toBe(true);
    return;
  }
  throw new Error(`expected INVALID_ARGUMENT naming ${field}`);
}

const cron = (c: string, timeZone = "UTC"): ScheduleSpec => ({ kind: "cron", cron: c, timeZone });
const every = (ms: number): ScheduleSpec => ({ kind: "interval", intervalMs: ms, timeZone: "UTC" });

describe("cron next occurrences", () => {
  it("fires strictly after the given time", () => {
    expect(iso(firstRun(cron("*/15 * * * *"), at("2025-01-01T00:15:00Z")))).toBe("2025-01-01T00:30:00.000Z");
    expect(iso(firstRun(cron("*/15 * * * *"), at("2025-01-01T00:14:59.999Z")))).toBe("2025-01-01T00:15:00.000Z");
    expect(iso(firstRun(cron("*/5 * * * * *"), at("2025-01-01T00:00:00.500Z")))).toBe("2025-01-01T00:00:05.000Z");
  });

  it("evaluates the expression in the schedule's time zone", () => {
    // 09:00 in New York is 14:00 UTC in winter, 13:00 UTC in summer.
    expect(runs(cron("0 9 * * *", "America/New_York"), at("2025-01-10T00:00:00Z"), at("2025-01-12T00:00:00Z"))).toEqual([
      "2025-01-10T14:00:00.000Z",
      "2025-01-11T14:00:00.000Z",
    ]);
    expect(iso(firstRun(cron("0 9 * * *", "America/New_York"), at("2025-07-10T00:00:00Z")))).toBe("2025-07-10T13:00:00.000Z");
  });

  it("fires a wall-clock time skipped by spring-forward exactly once that day (Europe/Berlin)", () => {
    // On 2025-03-30 Berlin jumps from 02:00 CET to 03:00 CEST: 02:30 does not exist that day.
    const ticks = runs(cron("30 2 * * *", "Europe/Berlin"), at("2025-03-28T12:00:00Z"), at("2025-04-01T12:00:00Z"));
    expect(ticks).toEqual([
      "2025-03-29T01:30:00.000Z", // 02:30 CET
      "2025-03-30T01:30:00.000Z", // the skipped 02:30 runs at 03:30 CEST
      "2025-03-31T00:30:00.000Z", // 02:30 CEST
      "2025-04-01T00:30:00.000Z",
    ]);
  });

  it("fires a wall-clock time repeated by fall-back once, and hourly schedules 25 times that day", () => {
    // On 2025-10-26 Berlin goes back from 03:00 CEST to 02:00 CET: 02:30 happens twice.
    expect(runs(cron("30 2 * * *", "Europe/Berlin"), at("2025-10-25T12:00:00Z"), at("2025-10-27T12:00:00Z"))).toEqual([
      "2025-10-26T00:30:00.000Z",
      "2025-10-27T01:30:00.000Z",
    ]);
    const day = runs(cron("0 * * * *", "Europe/Berlin"), at("2025-10-25T21:59:00Z"), at("2025-10-26T23:00:00Z"));
    expect(day).toHaveLength(25);
    const spring = runs(cron("0 * * * *", "Europe/Berlin"), at("2025-03-29T22:59:00Z"), at("2025-03-30T22:00:00Z"));
    expect(spring).toHaveLength(23);
  });

  it("skips missed occurrences after a gap: the next run is the first one after now", () => {
    // Due at 10:00, but the mesh was down until 13:20: one catch-up tick now, then 14:00.
    expect(iso(followingRun(cron("0 * * * *"), at("2025-01-01T10:00:00Z"), at("2025-01-01T13:20:00Z")))).toBe(
      "2025-01-01T14:00:00.000Z",
    );
  });

  it("accepts aliases and six-field expressions, and rare dates", () => {
    expect(iso(firstRun(cron("@daily"), at("2025-01-01T10:00:00Z")))).toBe("2025-01-02T00:00:00.000Z");
    expect(iso(firstRun(cron("0 0 29 2 *"), at("2025-01-01T00:00:00Z")))).toBe("2028-02-29T00:00:00.000Z");
  });
});

describe("interval next occurrences", () => {
  it("first runs one interval after creation, then stays on its grid", () => {
    const t0 = at("2025-01-01T00:00:00Z");
    expect(firstRun(every(1000), t0)).toBe(t0 + 1000);
    expect(followingRun(every(1000), t0 + 1000, t0 + 1000)).toBe(t0 + 2000);
    // A tick handled 300 ms late does not shift the next one.
    expect(followingRun(every(1000), t0 + 1000, t0 + 1300)).toBe(t0 + 2000);
    expect(runs(every(90_000), t0, t0 + 300_000).map((s) => at(s) - t0)).toEqual([90_000, 180_000, 270_000]);
  });

  it("skips missed ticks after a gap but keeps the grid", () => {
    const t0 = at("2025-01-01T00:00:00Z");
    // Due at +1 s, handled at +1 h 0.5 s: next at +1 h 1 s.
    expect(followingRun(every(1000), t0 + 1000, t0 + 3_600_500)).toBe(t0 + 3_601_000);
    // Handled exactly on a grid point: the next is the one after it.
    expect(followingRun(every(1000), t0 + 1000, t0 + 5000)).toBe(t0 + 6000);
  });
});

describe("validation", () => {
  const now = at("2025-01-01T00:00:00Z");
  const req = (spec: Parameters<typeof specFromRequest>[0]["spec"], timeZone = "") => ({ spec, timeZone });

  it("defaults the time zone to UTC and accepts IANA names", () => {
    expect(checkTimeZone("")).toBe("UTC");
    expect(checkTimeZone("Europe/Berlin")).toBe("Europe/Berlin");
    expect(specFromRequest(req({ case: "cron", value: " 0 9 * * 1-5 " }, "Asia/Tokyo"), now)).toEqual({
      kind: "cron",
      cron: "0 9 * * 1-5",
      timeZone: "Asia/Tokyo",
    });
    expect(specFromRequest(req({ case: "interval", value: { seconds: 2n, nanos: 500_000_000 } }), now)).toEqual({
      kind: "interval",
      intervalMs: 2500,
      timeZone: "UTC",
    });
  });

  it("names the field of a bad spec", () => {
    expectInvalid(() => checkTimeZone("Mars/Olympus_Mons"), "time_zone");
    expectInvalid(() => specFromRequest(req({ case: "cron", value: "0 9 * * *" }, "Not/AZone"), now), "time_zone");
    for (const bad of ["", "61 * * * *", "* * *", "garbage", "* * * * * * *", "0 0 30 2 *", "@every 5m", "*/0 * * * *"]) {
      expectInvalid(() => checkCron(bad, "UTC", now), "cron");
    }
    expectInvalid(() => specFromRequest(req({ case: undefined }), now), "cron");
    expectInvalid(() => specFromRequest(req({ case: "interval", value: { seconds: 0n, nanos: 999_000_000 } }), now), "interval");
    expectInvalid(() => specFromRequest(req({ case: "interval", value: { seconds: -5n, nanos: 0 } }), now), "interval");
    expectInvalid(() => specFromRequest(req({ case: "interval", value: { seconds: 10n ** 9n, nanos: 0 } }), now), "interval");
  });
});
