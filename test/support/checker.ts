/**
 * The multi-host fault test's checker: pure functions over what the run left behind — the load
 * generator's acknowledgements, the workers' own execution records
 * (test/fixtures/handlers/recorder.ts), the tasks' final states read through a gateway, and the
 * nemesis's record of every fault (when, which processes were cut off) — that say, per fault
 * window and for the time in between ("baseline"), what went wrong. No I/O: unit-tested with
 * synthetic records (test/unit/checker.test.ts).
 *
 * Definitions (all times are milliseconds since the epoch, one clock: every process runs on this
 * machine):
 *
 * - An execution is one handler run: a start record and, unless its process died or it is still
 *   running, an end record. Its effective end is the end record, else the death of its process,
 *   else the horizon.
 * - A task's executions are taken in dispatch order: by attempt number, then start. A *late start*
 *   is an execution that started after a higher attempt of its task had started: its worker was
 *   handed the assignment before it was given up and started it only later (it was frozen, or the
 *   assignment was in flight across a partition). Its worker may have held it since the task was
 *   first seen (acknowledged or started), not only since its start.
 * - An execution is *cut off* by a fault when its worker is among the fault's affected processes
 *   and the time its worker held it [start (or first sight, for a late start), effective end]
 *   meets the fault's [start, heal], the fault beginning before the next attempt started. A
 *   process's death that the nemesis did not cause (a crash) cuts off its executions too.
 * - Lost: an acknowledged task that did not end SUCCEEDED or has no execution that ended `ok`.
 * - Overlap: two executions of one task running at the same time. Allowed only when the one
 *   dispatched first was cut off before the other started.
 * - Re-run: an execution followed (in dispatch order) by another of the same task. Allowed only
 *   when it was cut off before the next one started.
 * - Attempt reuse: two executions with the same attempt number (a re-run must get attempt + 1).
 * - Waiting: a task is waiting from its acknowledgement to its first start, and from the moment
 *   one of its executions was lost (cut off, or ended without success) to its next start.
 * - Dispatch gap (per window): the longest stretch of the window during which some task was
 *   waiting and no execution started anywhere.
 * - Orphan wait (per fault): for each execution the fault cut off, the time from the cut to the
 *   task's next start, or to its recorded finish if it was not run again.
 */

/** One line of a worker's record file. */
export type ExecRecord =
  | { ev: "start"; x: string; task: string; attempt: number; worker: string; pid: number; t: number }
  | {
      ev: "end";
      x: string;
      task: string;
      attempt: number;
      worker: string;
      pid: number;
      t: number;
      outcome: "ok" | "aborted";
      reason?: string;
    };

/** One execution, its start and end records paired by `x`. */
export interface Execution {
  readonly x: string;
  readonly task: string;
  readonly attempt: number;
  readonly worker: string;
  readonly pid: number;
  readonly start: number;
  /** From the end record; undefined when there is none. */
  readonly end: number | undefined;
  readonly outcome: "ok" | "aborted" | undefined;
}

/** A task the load generator got an answer for: from then on it must not be lost. */
export interface Ack {
  readonly id: string;
  /** When the acknowledgement arrived. */
  readonly t: number;
}

/** A task's final state as a gateway reported it (status name, e.g. `SUCCEEDED`). */
export interface FinalTask {
  readonly id: string;
  readonly status: string;
  readonly attempt: number;
  /** `finished_at`, when set. */
  readonly finishedAt?: number | undefined;
}

/** A process that ended during the run: killed by the nemesis or died by itself. */
export interface Death {
  readonly process: string;
  readonly pid: number;
  readonly t: number;
  /** True when the nemesis killed it; false for a crash (which is a violation by itself). */
  readonly byNemesis: boolean;
  /** Exit code or signal, for the report. */
  readonly how: string;
}

/** One fault as the nemesis applied it, with what the test measured around it. */
export interface FaultWindow {
  readonly name: string;
  /** When the fault began (kill, SIGSTOP, rules in place). */
  readonly start: number;
  /** When it was removed (process restarted and healthy, SIGCONT, rules flushed). */
  readonly heal: number;
  /** When the system was seen settled again (or gave up waiting): the window's end. */
  readonly end: number;
  /** Whether it settled (every process healthy, a leader, every worker registered). */
  readonly settled: boolean;
  /** Process names cut off by the fault (workers are named by their worker id). */
  readonly affected: readonly string[];
  /** Longest acceptable dispatch gap and orphan wait in this window. */
  readonly boundMs: number;
  /** Per gateway: ms from heal until it served a call again; null when it did not in time. */
  readonly gatewayServeMs: Readonly<Record<string, number | null>>;
  /** Set when the fault could not be applied as planned; the window then fails. */
  readonly error?: string | undefined;
}

/** A process's state at the end of the run. */
export interface ProcessOutcome {
  readonly name: string;
  /** Running and answering its health check at the end. */
  readonly alive: boolean;
}

/** Everything {@link check} looks at. */
export interface CheckInput {
  readonly acks: readonly Ack[];
  readonly records: readonly ExecRecord[];
  /** Final states of (at least) the acknowledged tasks. */
  readonly finals: readonly FinalTask[];
  readonly faults: readonly FaultWindow[];
  readonly deaths: readonly Death[];
  /** Processes at the end; omit to skip the liveness check (a check of one window mid-run). */
  readonly processes?: readonly ProcessOutcome[] | undefined;
  /** End of observation: executions without an end count as running until then. */
  readonly horizon: number;
  /** Longest acceptable dispatch gap outside fault windows. */
  readonly baselineBoundMs: number;
  /** Longest acceptable time from a heal until each gateway serves again. */
  readonly gatewayServeBoundMs: number;
}

/** What kind of promise a violation breaks. */
export type ViolationKind =
  | "lost"
  | "overlap"
  | "rerun"
  | "attempt-reuse"
  | "dispatch-gap"
  | "orphan-wait"
  | "gateway"
  | "process"
  | "unsettled"
  | "fault";

/** One broken promise, attributed to the window in which it happened. */
export interface Violation {
  readonly window: string;
  readonly kind: ViolationKind;
  readonly detail: string;
}

/** The numbers of one fault window (or of the baseline: everything outside fault windows). */
export interface WindowReport {
  readonly name: string;
  readonly start: number;
  readonly end: number;
  readonly affected: readonly string[];
  /** Tasks acknowledged in the window. */
  readonly acked: number;
  /** Executions started in the window. */
  readonly starts: number;
  /** Acknowledged tasks (attributed here) that were lost. */
  readonly lost: number;
  readonly reruns: number;
  readonly unexplainedReruns: number;
  readonly overlaps: number;
  readonly disallowedOverlaps: number;
  readonly attemptReuses: number;
  /** Executions started after a higher attempt of their task had started (for information). */
  readonly lateStarts: number;
  /** Longest stretch with a task waiting and no start anywhere. */
  readonly dispatchGapMs: number;
  /** Longest wait of a task this fault cut off (0 for the baseline). */
  readonly orphanWaitMs: number;
  /** Executions this fault cut off. */
  readonly cutOff: number;
  /** Longest wait from acknowledgement to first start of a task acknowledged here (for information). */
  readonly maxQueueWaitMs: number;
  /** Longest stretch of the window without an acknowledgement (for information: submissions stalled). */
  readonly ackGapMs: number;
  readonly boundMs: number;
  readonly gatewayServeMs: Readonly<Record<string, number | null>>;
  readonly violations: readonly Violation[];
}

/** The checker's verdict. */
export interface CheckReport {
  readonly ok: boolean;
  readonly acked: number;
  readonly executions: number;
  readonly lost: number;
  readonly windows: readonly WindowReport[];
  readonly violations: readonly Violation[];
}

/** Name of the window that holds everything outside the fault windows. */
export const BASELINE = "baseline";

/** Pairs start and end records by execution id; an end without a start is ignored. */
export function executionsOf(records: readonly ExecRecord[]): Execution[] {
  const ends = new Map<string, Extract<ExecRecord, { ev: "end" }>>();
  for (const r of records) if (r.ev === "end") ends.set(r.x, r);
  const out: Execution[] = [];
  for (const r of records) {
    if (r.ev !== "start") continue;
    const e = ends.get(r.x);
    out.push({
      x: r.x,
      task: r.task,
      attempt: r.attempt,
      worker: r.worker,
      pid: r.pid,
      start: r.t,
      end: e?.t,
      outcome: e?.outcome,
    });
  }
  return out.sort((a, b) => a.start - b.start || a.x.localeCompare(b.x));
}

/**
 * Parses the text of record files: one JSON object per line. A last line without its newline
 * (being written while read) and lines that are not records are skipped.
 */
export function parseRecords(text: string): ExecRecord[] {
  const out: ExecRecord[] = [];
  const lines = text.split("\n");
  lines.pop(); // after the last newline: empty, or a line still being written
  for (const line of lines) {
    if (line.trim() === "") continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      continue;
    }
    if (isRecord(v)) out.push(v);
  }
  return out;
}

function isRecord(v: unknown): v is ExecRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  const common =
    typeof r["x"] === "string" &&
    typeof r["task"] === "string" &&
    typeof r["attempt"] === "number" &&
    typeof r["worker"] === "string" &&
    typeof r["pid"] === "number" &&
    typeof r["t"] === "number";
  if (!common) return false;
  if (r["ev"] === "start") return true;
  return r["ev"] === "end" && (r["outcome"] === "ok" || r["outcome"] === "aborted");
}

interface Cut {
  /** The fault window (or a synthetic one for a crash). */
  readonly window: string;
  /** When the execution was cut off: the later of its start and the fault's start. */
  readonly at: number;
}

/** Runs every check; see the module comment for the definitions. */
export function check(input: CheckInput): CheckReport {
  const execs = executionsOf(input.records);
  const violations: Violation[] = [];
  const faults = [...input.faults].sort((a, b) => a.start - b.start);
  const windowOf = (t: number): string => faults.find((f) => f.start <= t && t <= f.end)?.name ?? BASELINE;
  const deathOf = new Map<string, Death>();
  for (const d of input.deaths) deathOf.set(`${d.process}/${d.pid}`, d);
  const effEnd = (e: Execution): number => e.end ?? deathOf.get(`${e.worker}/${e.pid}`)?.t ?? input.horizon;

  // Everything that cuts executions off: the faults, and crashes (a death the nemesis did not cause).
  const cutters = [
    ...faults.map((f) => ({ name: f.name, start: f.start, heal: f.heal, affected: new Set(f.affected) })),
    ...input.deaths
      .filter((d) => !d.byNemesis)
      .map((d) => ({ name: windowOf(d.t), start: d.t, heal: d.t, affected: new Set([d.process]), pid: d.pid })),
  ];
  const byTask = new Map<string, Execution[]>();
  for (const e of execs) {
    let list = byTask.get(e.task);
    if (list === undefined) byTask.set(e.task, (list = []));
    list.push(e);
  }
  // Dispatch order: by attempt (the scheduler numbers dispatches), then by start. An execution
  // that started after a higher attempt of its task had started is a late start: its worker got
  // the assignment before it was given up, and started it only later (it was frozen, or cut off
  // with the assignment in flight).
  for (const runs of byTask.values()) runs.sort((a, b) => a.attempt - b.attempt || a.start - b.start);
  const finals = new Map(input.finals.map((f) => [f.id, f]));
  const acked = new Map<string, number>();
  for (const a of input.acks) if (!acked.has(a.id) || (acked.get(a.id) as number) > a.t) acked.set(a.id, a.t);
  /** Executions known to have been handed to their worker before they started, and since when. */
  const heldSince = new Map<Execution, number>();
  for (const [task, runs] of byTask) {
    const firstSeen = Math.min(acked.get(task) ?? Infinity, ...runs.map((e) => e.start));
    for (const e of runs) if (runs.some((o) => o.attempt > e.attempt && o.start < e.start)) heldSince.set(e, firstSeen);
  }
  /** From when the worker may have held `e`: its start, or for a late start the task's first sight. */
  const held = (e: Execution): number => heldSince.get(e) ?? e.start;

  /** The first fault that cut `e` off before `before`, if any. */
  const cutOf = (e: Execution, before: number): Cut | undefined => {
    let best: Cut | undefined;
    const end = effEnd(e);
    const from = held(e);
    for (const c of cutters) {
      if (!c.affected.has(e.worker)) continue;
      if ("pid" in c && c.pid !== e.pid) continue;
      if (c.start > end || c.heal < from || c.start >= before) continue;
      const at = Math.max(from, c.start);
      if (best === undefined || at < best.at) best = { window: c.name, at };
    }
    return best;
  };

  const count = new Map<string, Record<string, number>>();
  const bump = (window: string, key: string, n = 1): void => {
    let c = count.get(window);
    if (c === undefined) count.set(window, (c = {}));
    c[key] = (c[key] ?? 0) + n;
  };
  const maxOf = (window: string, key: string, v: number): void => {
    let c = count.get(window);
    if (c === undefined) count.set(window, (c = {}));
    c[key] = Math.max(c[key] ?? 0, v);
  };
  const describe = (e: Execution): string =>
    `attempt ${e.attempt} on ${e.worker} (${e.start}→${e.end === undefined ? "no end" : `${e.end} ${e.outcome}`})`;

  // Lost tasks.
  let lost = 0;
  for (const [id, t] of acked) {
    const runs = byTask.get(id) ?? [];
    const final = finals.get(id);
    const okRun = runs.some((e) => e.outcome === "ok");
    let why: string | undefined;
    if (final === undefined) why = "no final state could be read";
    else if (final.status !== "SUCCEEDED") why = `ended ${final.status} (attempt ${final.attempt})`;
    else if (!okRun) why = "SUCCEEDED without any execution record that ended ok";
    if (runs.length === 0) why = `never started${final === undefined ? "" : ` (status ${final.status})`}`;
    if (why === undefined) continue;
    lost++;
    const lastStart = Math.max(t, ...runs.map((e) => e.start));
    const window = windowOf(lastStart);
    bump(window, "lost");
    const where = runs.map((e) => `${e.worker}#${e.attempt}@${e.start}${e.end === undefined ? "(no end)" : `→${e.outcome}`}`);
    violations.push({ window, kind: "lost", detail: `task ${id} acked at ${t}: ${why}; executions: ${where.join(", ") || "none"}` });
  }

  // Re-runs, overlaps, attempt reuse, and the intervals during which tasks were waiting.
  const waiting: [number, number][] = [];
  const orphanWaits: { window: string; wait: number; task: string }[] = [];
  for (const [task, runs] of byTask) {
    const ackT = acked.get(task);
    const firstStart = Math.min(...runs.map((e) => e.start));
    if (ackT !== undefined) {
      waiting.push([ackT, firstStart]);
      maxOf(windowOf(ackT), "queueWait", Math.max(0, firstStart - ackT));
    }
    for (let i = 0; i < runs.length; i++) {
      const e = runs[i] as Execution;
      const next = runs[i + 1];
      if (heldSince.has(e)) bump(windowOf(e.start), "lateStarts");
      const prev = runs[i - 1];
      if (prev !== undefined && prev.attempt === e.attempt) {
        const w = windowOf(Math.max(prev.start, e.start));
        bump(w, "attemptReuse");
        violations.push({ window: w, kind: "attempt-reuse", detail: `task ${task}: attempt ${e.attempt} executed twice: ${describe(prev)} and ${describe(e)}` });
      }
      const cut = cutOf(e, next?.start ?? Infinity);
      if (cut !== undefined) {
        bump(cut.window, "cutOff");
        let resumed: number | undefined = next?.start;
        if (resumed === undefined) {
          const f = finals.get(task);
          if (f?.status === "SUCCEEDED" && e.outcome === "ok") resumed = f.finishedAt ?? effEnd(e);
        }
        orphanWaits.push({ window: cut.window, wait: Math.max(0, (resumed ?? input.horizon) - cut.at), task });
      }
      if (next === undefined) {
        // Lost at the horizon: waiting from the moment its last execution was lost.
        if (ackT !== undefined && e.outcome !== "ok" && !(finals.get(task)?.status === "SUCCEEDED")) {
          const from = cut?.at ?? e.end;
          if (from !== undefined) waiting.push([from, input.horizon]);
        }
      } else {
        // A re-run (the next attempt): explained only by a cut before it started.
        const w = windowOf(next.start);
        bump(w, "reruns");
        if (cut === undefined) {
          bump(w, "unexplainedReruns");
          violations.push({
            window: w,
            kind: "rerun",
            detail: `task ${task}: ${describe(next)} re-ran ${describe(e)}, whose worker no fault cut off`,
          });
        }
        // Waiting again from the moment the execution was lost (an `ok` end re-run without a cut
        // was not waiting: the re-run itself is the violation).
        const lostAt = cut?.at ?? (e.outcome === "aborted" ? e.end : undefined);
        if (lostAt !== undefined && ackT !== undefined) waiting.push([lostAt, next.start]);
      }
      // Overlaps with every later attempt (or later run of the same attempt).
      for (let j = i + 1; j < runs.length; j++) {
        const later = runs[j] as Execution;
        if (!(later.start < effEnd(e) && e.start < effEnd(later))) continue;
        const lw = windowOf(Math.max(e.start, later.start));
        bump(lw, "overlaps");
        if (cutOf(e, later.start) === undefined) {
          bump(lw, "disallowedOverlaps");
          violations.push({
            window: lw,
            kind: "overlap",
            detail: `task ${task}: ${describe(later)} ran at the same time as ${describe(e)}, whose worker no fault cut off`,
          });
        }
      }
    }
  }
  for (const [id, t] of acked) if (!byTask.has(id)) waiting.push([t, input.horizon]);
  for (const o of orphanWaits) maxOf(o.window, "orphanWait", o.wait);

  // Dispatch gaps: per fault window, and over the stretches between them (the baseline).
  const starts = execs.map((e) => e.start).sort((a, b) => a - b);
  const ackTimes = [...acked.values()].sort((a, b) => a - b);
  const firstT = Math.min(ackTimes[0] ?? input.horizon, starts[0] ?? input.horizon);
  const baselineSegs: [number, number][] = [];
  const segments = new Map<string, [number, number][]>([[BASELINE, baselineSegs]]);
  let cursor = firstT;
  for (const f of faults) {
    if (f.start > cursor) baselineSegs.push([cursor, f.start]);
    segments.set(f.name, [[f.start, f.end]]);
    cursor = Math.max(cursor, f.end);
  }
  if (input.horizon > cursor) baselineSegs.push([cursor, input.horizon]);
  const gaps = new Map<string, number>();
  const ackGaps = new Map<string, number>();
  for (const [name, segs] of segments) {
    let g = 0;
    let ag = 0;
    for (const [a, b] of segs) {
      g = Math.max(g, dispatchGap(waiting, starts, a, b));
      ag = Math.max(ag, longestEmptyStretch(ackTimes, a, b));
    }
    gaps.set(name, g);
    ackGaps.set(name, ag);
  }

  // Per-window verdicts.
  const windows: WindowReport[] = [];
  const startsIn = (a: number, b: number): number => starts.filter((t) => t >= a && t <= b).length;
  const acksIn = (a: number, b: number): number => ackTimes.filter((t) => t >= a && t <= b).length;
  const windowViolations = (name: string): Violation[] => violations.filter((v) => v.window === name);
  for (const f of faults) {
    const c = count.get(f.name) ?? {};
    const gap = gaps.get(f.name) ?? 0;
    const orphan = c["orphanWait"] ?? 0;
    if (f.error !== undefined) violations.push({ window: f.name, kind: "fault", detail: f.error });
    if (!f.settled) violations.push({ window: f.name, kind: "unsettled", detail: `did not settle by ${f.end}` });
    if (gap > f.boundMs) {
      violations.push({ window: f.name, kind: "dispatch-gap", detail: `no execution started for ${gap} ms while tasks waited (bound ${f.boundMs} ms)` });
    }
    if (orphan > f.boundMs) {
      const worst = orphanWaits.filter((o) => o.window === f.name).sort((a, b) => b.wait - a.wait)[0];
      violations.push({
        window: f.name,
        kind: "orphan-wait",
        detail: `a task cut off by the fault waited ${orphan} ms to run again or finish (bound ${f.boundMs} ms; task ${worst?.task ?? "?"})`,
      });
    }
    for (const [gw, ms] of Object.entries(f.gatewayServeMs)) {
      if (ms === null || ms > input.gatewayServeBoundMs) {
        violations.push({
          window: f.name,
          kind: "gateway",
          detail: `${gw} ${ms === null ? "did not serve again" : `served again only ${ms} ms`} after the heal (bound ${input.gatewayServeBoundMs} ms)`,
        });
      }
    }
    for (const d of input.deaths) {
      if (!d.byNemesis && d.t >= f.start && d.t <= f.end) {
        violations.push({ window: f.name, kind: "process", detail: `${d.process} (pid ${d.pid}) died by itself at ${d.t}: ${d.how}` });
      }
    }
    windows.push({
      name: f.name,
      start: f.start,
      end: f.end,
      affected: f.affected,
      acked: acksIn(f.start, f.end),
      starts: startsIn(f.start, f.end),
      lost: c["lost"] ?? 0,
      reruns: c["reruns"] ?? 0,
      unexplainedReruns: c["unexplainedReruns"] ?? 0,
      overlaps: c["overlaps"] ?? 0,
      disallowedOverlaps: c["disallowedOverlaps"] ?? 0,
      attemptReuses: c["attemptReuse"] ?? 0,
      lateStarts: c["lateStarts"] ?? 0,
      dispatchGapMs: gap,
      orphanWaitMs: orphan,
      cutOff: c["cutOff"] ?? 0,
      maxQueueWaitMs: c["queueWait"] ?? 0,
      ackGapMs: ackGaps.get(f.name) ?? 0,
      boundMs: f.boundMs,
      gatewayServeMs: f.gatewayServeMs,
      violations: windowViolations(f.name),
    });
  }
  {
    const c = count.get(BASELINE) ?? {};
    const gap = gaps.get(BASELINE) ?? 0;
    if (gap > input.baselineBoundMs) {
      violations.push({ window: BASELINE, kind: "dispatch-gap", detail: `no execution started for ${gap} ms while tasks waited (bound ${input.baselineBoundMs} ms)` });
    }
    for (const d of input.deaths) {
      if (!d.byNemesis && windowOf(d.t) === BASELINE) {
        violations.push({ window: BASELINE, kind: "process", detail: `${d.process} (pid ${d.pid}) died by itself at ${d.t}: ${d.how}` });
      }
    }
    for (const p of input.processes ?? []) {
      if (!p.alive) violations.push({ window: BASELINE, kind: "process", detail: `${p.name} is not alive at the end` });
    }
    const inBaseline = (t: number): boolean => baselineSegs.some(([a, b]) => t >= a && t <= b);
    windows.push({
      name: BASELINE,
      start: firstT,
      end: input.horizon,
      affected: [],
      acked: ackTimes.filter(inBaseline).length,
      starts: starts.filter(inBaseline).length,
      lost: c["lost"] ?? 0,
      reruns: c["reruns"] ?? 0,
      unexplainedReruns: c["unexplainedReruns"] ?? 0,
      overlaps: c["overlaps"] ?? 0,
      disallowedOverlaps: c["disallowedOverlaps"] ?? 0,
      attemptReuses: c["attemptReuse"] ?? 0,
      lateStarts: c["lateStarts"] ?? 0,
      dispatchGapMs: gap,
      orphanWaitMs: c["orphanWait"] ?? 0,
      cutOff: c["cutOff"] ?? 0,
      maxQueueWaitMs: c["queueWait"] ?? 0,
      ackGapMs: ackGaps.get(BASELINE) ?? 0,
      boundMs: input.baselineBoundMs,
      gatewayServeMs: {},
      violations: windowViolations(BASELINE),
    });
  }
  return { ok: violations.length === 0, acked: acked.size, executions: execs.length, lost, windows, violations };
}

/**
 * Longest stretch of [from, to] that lies inside the union of `waiting` intervals and holds no
 * start. `starts` must be sorted.
 */
export function dispatchGap(waiting: readonly (readonly [number, number])[], starts: readonly number[], from: number, to: number): number {
  const clipped = waiting
    .map(([a, b]) => [Math.max(a, from), Math.min(b, to)] as const)
    .filter(([a, b]) => b > a)
    .sort((p, q) => p[0] - q[0]);
  let best = 0;
  let i = 0;
  while (i < clipped.length) {
    let [a, b] = clipped[i] as readonly [number, number];
    for (i++; i < clipped.length && (clipped[i] as readonly [number, number])[0] <= b; i++) {
      b = Math.max(b, (clipped[i] as readonly [number, number])[1]);
    }
    best = Math.max(best, longestEmptyStretch(starts, a, b));
  }
  return best;
}

/** Longest sub-interval of [from, to] holding none of the sorted `times`. */
export function longestEmptyStretch(times: readonly number[], from: number, to: number): number {
  if (to <= from) return 0;
  let best = 0;
  let prev = from;
  let lo = 0;
  let hi = times.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((times[mid] as number) <= from) lo = mid + 1;
    else hi = mid;
  }
  for (let k = lo; k < times.length && (times[k] as number) < to; k++) {
    const t = times[k] as number;
    best = Math.max(best, t - prev);
    prev = t;
  }
  return Math.max(best, to - prev);
}

/** The report as a table plus the violations, for the test's output. */
export function formatReport(r: CheckReport, t0 = 0): string {
  const rel = (t: number): string => ((t - t0) / 1000).toFixed(1);
  const head = ["window", "at s", "affected", "acked", "starts", "lost", "rerun/unexpl", "overlap/bad", "att.reuse", "late", "gap ms", "orphan ms", "bound", "qwait ms", "ackgap ms", "gw serve ms"];
  const rows = r.windows.map((w) => [
    w.name,
    `${rel(w.start)}–${rel(w.end)}`,
    w.affected.join(",") || "-",
    String(w.acked),
    String(w.starts),
    String(w.lost),
    `${w.reruns}/${w.unexplainedReruns}`,
    `${w.overlaps}/${w.disallowedOverlaps}`,
    String(w.attemptReuses),
    String(w.lateStarts),
    String(w.dispatchGapMs),
    String(w.orphanWaitMs),
    String(w.boundMs),
    String(w.maxQueueWaitMs),
    String(w.ackGapMs),
    Object.entries(w.gatewayServeMs).map(([g, ms]) => `${g}:${ms ?? "never"}`).join(" ") || "-",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] as string).length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] as number)).join("  ").trimEnd();
  const out = [
    `acked ${r.acked}, executions ${r.executions}, lost ${r.lost}, violations ${r.violations.length}`,
    line(head),
    ...rows.map(line),
  ];
  const shown = r.violations.slice(0, 60);
  for (const v of shown) out.push(`  ✗ [${v.window}] ${v.kind}: ${v.detail}`);
  if (r.violations.length > shown.length) out.push(`  … ${r.violations.length - shown.length} more violations`);
  return out.join("\n");
}
