import { describe, expect, it } from "vitest";
import {
  BASELINE,
  check,
  dispatchGap,
  longestEmptyStretch,
  parseRecords,
  type Ack,
  type CheckInput,
  type Death,
  type ExecRecord,
  type FaultWindow,
  type FinalTask,
} from "../support/checker.js";

/** Builds the records of one execution; `end` undefined leaves a start without an end. */
function run(
  x: string,
  task: string,
  attempt: number,
  worker: string,
  start: number,
  end: number | undefined,
  outcome: "ok" | "aborted" = "ok",
  pid = 100,
): ExecRecord[] {
  const base = { x, task, attempt, worker, pid };
  const out: ExecRecord[] = [{ ev: "start", ...base, t: start }];
  if (end !== undefined) out.push({ ev: "end", ...base, t: end, outcome });
  return out;
}

function fault(over: Partial<FaultWindow> & { name: string; start: number; heal: number; end: number }): FaultWindow {
  return { settled: true, affected: [], boundMs: 4000, gatewayServeMs: {}, ...over };
}

function input(over: Partial<CheckInput>): CheckInput {
  return {
    acks: [],
    records: [],
    finals: [],
    faults: [],
    deaths: [],
    processes: [],
    horizon: 100_000,
    baselineBoundMs: 4000,
    gatewayServeBoundMs: 5000,
    ...over,
  };
}

const ok = (id: string, finishedAt?: number): FinalTask => ({ id, status: "SUCCEEDED", attempt: 1, finishedAt });

/** A steady stream of tasks: one acknowledged every `every` ms from `from` to `to`, each run at once for 300 ms. */
function steady(from: number, to: number, every = 100, worker = "w1"): { acks: Ack[]; records: ExecRecord[]; finals: FinalTask[] } {
  const acks: Ack[] = [];
  const records: ExecRecord[] = [];
  const finals: FinalTask[] = [];
  for (let t = from, i = 0; t < to; t += every, i++) {
    const id = `s${t}`;
    acks.push({ id, t });
    records.push(...run(`sx${t}`, id, 1, worker, t + 5, t + 305));
    finals.push(ok(id, t + 306));
  }
  return { acks, records, finals };
}

describe("checker", () => {
  it("passes a clean run and counts what it saw", () => {
    const s = steady(1000, 5000);
    const r = check(input({ ...s, processes: [{ name: "w1", alive: true }] }));
    expect(r.violations).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.acked).toBe(40);
    expect(r.executions).toBe(40);
    const base = r.windows.find((w) => w.name === BASELINE);
    expect(base?.acked).toBe(40);
    expect(base?.maxQueueWaitMs).toBe(5);
  });

  it("finds acknowledged tasks that never ran, did not succeed, or succeeded without an execution", () => {
    const r = check(
      input({
        acks: [
          { id: "never", t: 1000 },
          { id: "failed", t: 1000 },
          { id: "ghost", t: 1000 },
          { id: "unread", t: 1000 },
          { id: "fine", t: 1000 },
        ],
        records: [...run("a", "failed", 1, "w1", 1100, 1400, "aborted"), ...run("b", "ghost", 1, "w1", 1100, undefined), ...run("c", "fine", 1, "w1", 1100, 1400), ...run("d", "unread", 1, "w1", 1100, 1400)],
        finals: [ok("never"), { id: "failed", status: "FAILED", attempt: 3 }, ok("ghost"), ok("fine")],
        horizon: 3000,
      }),
    );
    expect(r.lost).toBe(4);
    const lost = r.violations.filter((v) => v.kind === "lost").map((v) => v.detail.split(" ")[1]);
    expect(lost.sort()).toEqual(["failed", "ghost", "never", "unread"]);
    expect(r.violations.find((v) => v.detail.includes("task never"))?.detail).toContain("never started");
    expect(r.violations.find((v) => v.detail.includes("task ghost"))?.detail).toContain("without any execution record that ended ok");
  });

  it("allows a re-run and an overlap only when the earlier execution's worker was cut off", () => {
    const frozen = fault({ name: "freeze-w1", start: 2000, heal: 8000, end: 9000, affected: ["w1"] });
    const leader = fault({ name: "kill-leader", start: 12_000, heal: 12_500, end: 14_000, affected: ["scheduler-1"] });
    const r = check(
      input({
        acks: [
          { id: "t1", t: 1000 },
          { id: "t2", t: 11_900 },
        ],
        records: [
          // t1 ran on w1 when it froze; re-run on w2 while the frozen run finished late: allowed.
          ...run("a", "t1", 1, "w1", 1500, 8200),
          ...run("b", "t1", 2, "w2", 5000, 5300),
          // t2 ran on w2, which no fault touched, and was run again on w3 while still running: not allowed.
          ...run("c", "t2", 1, "w2", 11_950, 12_900),
          ...run("d", "t2", 2, "w3", 12_600, 12_900),
        ],
        finals: [ok("t1", 5301), ok("t2", 12_901)],
        faults: [frozen, leader],
      }),
    );
    const f = r.windows.find((w) => w.name === "freeze-w1");
    expect(f).toMatchObject({ reruns: 1, unexplainedReruns: 0, overlaps: 1, disallowedOverlaps: 0, cutOff: 1, orphanWaitMs: 3000 });
    const k = r.windows.find((w) => w.name === "kill-leader");
    expect(k).toMatchObject({ reruns: 1, unexplainedReruns: 1, overlaps: 1, disallowedOverlaps: 1 });
    expect(r.violations.map((v) => `${v.window}:${v.kind}`).sort()).toEqual(["kill-leader:overlap", "kill-leader:rerun"]);
  });

  it("does not let a fault excuse executions that started after its heal", () => {
    const kill = fault({ name: "kill-w1", start: 2000, heal: 2500, end: 4000, affected: ["w1"] });
    const r = check(
      input({
        acks: [{ id: "t", t: 2900 }],
        records: [...run("a", "t", 1, "w1", 3000, 3300, "ok", 200), ...run("b", "t", 2, "w2", 3500, 3800)],
        finals: [ok("t", 3801)],
        faults: [kill],
        deaths: [{ process: "w1", pid: 100, t: 2000, byNemesis: true, how: "SIGKILL" }],
      }),
    );
    expect(r.violations.map((v) => v.kind)).toEqual(["rerun"]);
  });

  it("ends a killed process's executions at its death, so a re-run after it is no overlap", () => {
    const kill = fault({ name: "kill-w1", start: 2000, heal: 2600, end: 4000, affected: ["w1"] });
    const deaths: Death[] = [{ process: "w1", pid: 100, t: 2000, byNemesis: true, how: "SIGKILL" }];
    const r = check(
      input({
        acks: [{ id: "t", t: 1000 }],
        records: [...run("a", "t", 1, "w1", 1100, undefined), ...run("b", "t", 2, "w2", 2300, 2600)],
        finals: [ok("t", 2601)],
        faults: [kill],
        deaths,
      }),
    );
    expect(r.violations).toEqual([]);
    expect(r.windows.find((w) => w.name === "kill-w1")).toMatchObject({ reruns: 1, overlaps: 0, orphanWaitMs: 300 });
  });

  it("takes executions in attempt order: a frozen worker's late start of an old attempt is its own cut-off work", () => {
    const freeze = fault({ name: "stop-w3", start: 2000, heal: 8000, end: 9000, affected: ["w3"], boundMs: 5000 });
    const r = check(
      input({
        acks: [{ id: "t", t: 1900 }],
        // Attempt 1 was handed to w3 just before it froze; w3 started it only after SIGCONT,
        // long after attempt 2 had run on w1.
        records: [...run("a", "t", 2, "w1", 5000, 5300), ...run("b", "t", 1, "w3", 8100, 8400)],
        finals: [ok("t", 5301)],
        faults: [freeze],
      }),
    );
    expect(r.violations).toEqual([]);
    expect(r.windows.find((w) => w.name === "stop-w3")).toMatchObject({ reruns: 1, unexplainedReruns: 0, lateStarts: 1, orphanWaitMs: 3000 });
    // The same late start on a worker that no fault touched is an unexplained re-run.
    const r2 = check(input({ acks: [{ id: "t", t: 1900 }], records: [...run("a", "t", 2, "w1", 5000, 5300), ...run("b", "t", 1, "w3", 8100, 8400)], finals: [ok("t", 5301)] }));
    expect(r2.violations.map((v) => v.kind)).toEqual(["rerun"]);
  });

  it("reports the same attempt executed twice", () => {
    const kill = fault({ name: "kill-w1", start: 2000, heal: 2600, end: 4000, affected: ["w1"] });
    const r = check(
      input({
        acks: [{ id: "t", t: 1000 }],
        records: [...run("a", "t", 1, "w1", 1100, undefined), ...run("b", "t", 1, "w2", 2300, 2600)],
        finals: [ok("t", 2601)],
        faults: [kill],
        deaths: [{ process: "w1", pid: 100, t: 2000, byNemesis: true, how: "SIGKILL" }],
      }),
    );
    expect(r.violations.map((v) => `${v.window}:${v.kind}`)).toEqual(["kill-w1:attempt-reuse"]);
  });

  it("measures the dispatch gap only while a task waits, and flags it above the bound", () => {
    // Steady load, then 5 s in which tasks are acknowledged but none starts, then it resumes.
    const before = steady(1000, 10_000);
    const after = steady(16_000, 20_000);
    const stuck: Ack[] = [];
    const stuckRuns: ExecRecord[] = [];
    const stuckFinals: FinalTask[] = [];
    for (let t = 10_000; t < 15_000; t += 100) {
      stuck.push({ id: `q${t}`, t });
      stuckRuns.push(...run(`qx${t}`, `q${t}`, 1, "w2", 15_000 + (t - 10_000) / 100, 15_400));
      stuckFinals.push(ok(`q${t}`, 15_401));
    }
    const base = {
      acks: [...before.acks, ...stuck, ...after.acks],
      records: [...before.records, ...stuckRuns, ...after.records],
      finals: [...before.finals, ...stuckFinals, ...after.finals],
      horizon: 21_000,
    };
    const w = fault({ name: "kill-leader", start: 9500, heal: 9600, end: 17_000, affected: ["scheduler-1"], boundMs: 4000 });
    const r = check(input({ ...base, faults: [w] }));
    const kw = r.windows.find((x) => x.name === "kill-leader");
    // The first stuck task waits from 10000; nothing starts until 15000.
    expect(kw?.dispatchGapMs).toBe(5000);
    expect(kw?.maxQueueWaitMs).toBe(5000);
    expect(r.violations.map((v) => `${v.window}:${v.kind}`)).toEqual(["kill-leader:dispatch-gap"]);
    // The same stall with a bound above it passes; the baseline saw no gap.
    const r2 = check(input({ ...base, faults: [{ ...w, boundMs: 6000 }] }));
    expect(r2.violations).toEqual([]);
    expect(r2.windows.find((x) => x.name === BASELINE)?.dispatchGapMs).toBeLessThan(1000);
  });

  it("counts no gap while nothing waits, even without starts", () => {
    const s = steady(1000, 2000);
    const r = check(input({ ...s, faults: [fault({ name: "quiet", start: 3000, heal: 3100, end: 20_000 })], horizon: 21_000 }));
    expect(r.windows.find((w) => w.name === "quiet")?.dispatchGapMs).toBe(0);
    expect(r.violations).toEqual([]);
  });

  it("flags a cut-off task that waited too long to run again or to finish", () => {
    // Other work goes on (no dispatch gap): only the orphan wait sees it.
    const load = steady(500, 12_000, 100, "w2");
    const part = fault({ name: "partition-d", start: 2000, heal: 8000, end: 9000, affected: ["w1"], boundMs: 5000 });
    const r = check(
      input({
        acks: [
          ...load.acks,
          { id: "late", t: 1000 },
          { id: "stuck", t: 1000 },
        ],
        records: [
          ...load.records,
          // "late" was run again 7 s after the cut; "stuck" finished on the cut-off worker but its
          // result only landed after the heal.
          ...run("a", "late", 1, "w1", 1900, 2100),
          ...run("b", "late", 2, "w2", 9000, 9300),
          ...run("c", "stuck", 1, "w1", 1950, 2200),
        ],
        finals: [...load.finals, ok("late", 9301), ok("stuck", 8100)],
        faults: [part],
      }),
    );
    const w = r.windows.find((x) => x.name === "partition-d");
    expect(w?.orphanWaitMs).toBe(7000);
    expect(w?.cutOff).toBe(2);
    expect(w?.dispatchGapMs).toBeLessThan(200);
    expect(r.violations.map((v) => v.kind)).toEqual(["orphan-wait"]);
  });

  it("flags crashes, dead processes, unsettled faults, failed fault plans and slow gateways", () => {
    const w = fault({
      name: "partition-a",
      start: 2000,
      heal: 4000,
      end: 6000,
      settled: false,
      gatewayServeMs: { "gateway-1": 6500, "gateway-2": 10, "gateway-3": null },
      error: "could not find the leader",
    });
    const r = check(
      input({
        faults: [w],
        deaths: [
          { process: "config", pid: 7, t: 3000, byNemesis: false, how: "exit 1" },
          { process: "w1", pid: 8, t: 9000, byNemesis: false, how: "SIGSEGV" },
        ],
        processes: [
          { name: "config", alive: true },
          { name: "w1", alive: false },
        ],
        horizon: 10_000,
      }),
    );
    expect(r.violations.map((v) => `${v.window}:${v.kind}`).sort()).toEqual([
      "baseline:process",
      "baseline:process",
      "partition-a:fault",
      "partition-a:gateway",
      "partition-a:gateway",
      "partition-a:process",
      "partition-a:unsettled",
    ]);
  });

  it("treats a crash as cutting off the crashed process's executions", () => {
    const r = check(
      input({
        acks: [{ id: "t", t: 1000 }],
        records: [...run("a", "t", 1, "w1", 1100, undefined, "ok", 55), ...run("b", "t", 2, "w2", 3000, 3300)],
        finals: [ok("t", 3301)],
        deaths: [{ process: "w1", pid: 55, t: 2000, byNemesis: false, how: "exit 1" }],
        processes: [{ name: "w1", alive: true }],
      }),
    );
    // The crash is the violation; the re-run it caused is not another one.
    expect(r.violations.map((v) => v.kind)).toEqual(["process"]);
  });

  it("parses record lines, skipping a torn last line and foreign lines", () => {
    const lines = [
      JSON.stringify({ ev: "start", x: "1-1", task: "t", attempt: 1, worker: "w", pid: 1, t: 5 }),
      "not json",
      JSON.stringify({ ev: "end", x: "1-1", task: "t", attempt: 1, worker: "w", pid: 1, t: 9, outcome: "ok" }),
      JSON.stringify({ ev: "end", x: "1-2", task: "t", attempt: 1, worker: "w", pid: 1, t: 9, outcome: "weird" }),
      '{"ev":"start","x":"1-3"',
    ];
    const recs = parseRecords(lines.join("\n"));
    expect(recs.map((r) => `${r.ev}:${r.x}`)).toEqual(["start:1-1", "end:1-1"]);
  });

  it("computes empty stretches and gaps over unions of waiting intervals", () => {
    expect(longestEmptyStretch([], 0, 10)).toBe(10);
    expect(longestEmptyStretch([2, 3, 9], 0, 10)).toBe(6);
    expect(longestEmptyStretch([0, 10], 0, 10)).toBe(10);
    expect(longestEmptyStretch([5], 10, 10)).toBe(0);
    // Waiting over [0,4] and [3,8] (one union [0,8]), starts at 1 and 6: the longest piece is 1→6.
    expect(dispatchGap([[0, 4], [3, 8]], [1, 6], 0, 100)).toBe(5);
    // Clipped to the window.
    expect(dispatchGap([[0, 40]], [], 10, 20)).toBe(10);
    expect(dispatchGap([], [1, 2], 0, 100)).toBe(0);
  });
});
