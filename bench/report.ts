/**
 * Turns one run's numbers into the side-by-side table (taskmesh, BullMQ, ratio, target), the
 * PASS/FAIL list, a Markdown copy of both and a hand-written SVG chart (no chart library).
 */
import type { Crash, Drain, Latency, Memory, Throughput } from "./scenarios.js";
import type { EchoRate, LuaRate } from "./limits.js";
import type { Percentiles } from "./stats.js";

/** Scenario C adds its ideal time to a drain. */
export type SleepDrain = Drain & { idealS: number; factor: number };

/** What one system produced in a run (a scenario that failed is left out and listed in `errors`). */
export interface SystemResults {
  enqueueSingle?: Throughput;
  enqueueBatched?: Throughput;
  drain1?: Drain;
  drain50?: Drain;
  latency1?: Latency;
  latency50?: Latency;
  sleepDrain?: SleepDrain;
  crash?: Crash;
  memory?: Memory;
  errors: string[];
}

/** The physical limits of the machine, measured in the same run. */
export interface Limits {
  redisEvalsha?: LuaRate[];
  grpcEcho?: EchoRate[];
  errors: string[];
}

/** Everything one run measured (what bench/out/results.json holds, less the derived rows). */
export interface RunRecord {
  command: string;
  quick: boolean;
  /** Every scenario on both systems (only such a run, not quick, replaces bench/results.svg). */
  complete: boolean;
  startedAt: string;
  machine: {
    cpus: number;
    cpuModel: string;
    memoryGiB: number;
    node: string;
    redis: string;
    bullmq: string;
    loadAverage: { before: number[]; after: number[] };
  };
  taskmesh: SystemResults;
  bullmq: SystemResults;
  limits: Limits;
}

/** Which way a ratio (taskmesh ÷ BullMQ) is better. */
type Better = "higher" | "lower" | "info";

/** One line of the table. */
export interface Row {
  group: string;
  what: string;
  unit: string;
  taskmesh: number | undefined;
  bullmq: number | undefined;
  /** taskmesh ÷ BullMQ. */
  ratio: number | undefined;
  better: Better;
  target?: string;
  pass?: boolean;
}

/** One target of the issue and whether this run met it. */
export interface TargetResult {
  name: string;
  rule: string;
  value: string;
  pass: boolean | undefined;
}

const ratio = (a: number | undefined, b: number | undefined): number | undefined =>
  a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? undefined : a / b;

function row(
  group: string,
  what: string,
  unit: string,
  tm: number | undefined,
  bull: number | undefined,
  better: Better,
  target?: { text: string; pass: (r: number) => boolean },
): Row {
  const r = ratio(tm, bull);
  const out: Row = { group, what, unit, taskmesh: tm, bullmq: bull, ratio: r, better };
  if (target !== undefined) {
    out.target = target.text;
    if (r !== undefined) out.pass = target.pass(r);
  }
  return out;
}

/** The table's rows, in order, from both systems' results. */
export function buildRows(tm: SystemResults, bull: SystemResults, limits: Limits): Row[] {
  const rows: Row[] = [];
  const A = "A enqueue & drain";
  rows.push(row(A, "enqueue, one call per task, 64 in flight", "tasks/s", tm.enqueueSingle?.perSecond, bull.enqueueSingle?.perSecond, "higher"));
  rows.push(
    row(A, "enqueue, batches of 1,000 (SubmitTasks / addBulk), 4 in flight", "tasks/s", tm.enqueueBatched?.perSecond, bull.enqueueBatched?.perSecond, "higher", {
      text: "≥ 1.0×",
      pass: (r) => r >= 1,
    }),
  );
  const failed = (what: string, g: string, t: { errors?: number } | undefined, b: { errors?: number } | undefined): void => {
    if ((t?.errors ?? 0) + (b?.errors ?? 0) > 0) {
      rows.push(row(g, `${what}: submit calls failed`, "tasks", t === undefined ? undefined : (t.errors ?? 0), b === undefined ? undefined : (b.errors ?? 0), "info"));
    }
  };
  failed("enqueue one at a time", A, tm.enqueueSingle, bull.enqueueSingle);
  failed("enqueue batched", A, tm.enqueueBatched, bull.enqueueBatched);
  rows.push(row(A, "drain, 1 worker × 1 slot", "tasks/s", tm.drain1?.perSecond, bull.drain1?.perSecond, "higher"));
  rows.push(
    row(A, "drain, 1 worker × 50 slots", "tasks/s", tm.drain50?.perSecond, bull.drain50?.perSecond, "higher", { text: "≥ 1.0×", pass: (r) => r >= 1 }),
  );
  for (const [slots, t, b] of [
    [1, tm.latency1, bull.latency1],
    [50, tm.latency50, bull.latency50],
  ] as const) {
    const g = `B ${t?.rate ?? b?.rate ?? 200}/s, ${slots} slot${slots === 1 ? "" : "s"}`;
    const pct = (name: string, key: keyof Omit<Percentiles, "n">, get: (l: Latency) => Percentiles, target?: boolean): void => {
      rows.push(
        row(
          g,
          `${name} ${key}`,
          "ms",
          t === undefined ? undefined : get(t)[key],
          b === undefined ? undefined : get(b)[key],
          "lower",
          target === true ? { text: "≤ 1.0×", pass: (r) => r <= 1 } : undefined,
        ),
      );
    };
    for (const k of ["p50", "p95", "p99", "max"] as const) pct("submit→start (in worker, sub-ms)", k, (l) => l.submitToStartMs, k === "p99");
    for (const k of ["p50", "p95", "p99", "max"] as const) pct("submit→done (system finish time, 1 ms)", k, (l) => l.submitToDoneMs);
    for (const k of ["p50", "p99"] as const) pct("submit→system start time (1 ms)", k, (l) => l.submitToSystemStartMs);
    for (const k of ["p50", "p99"] as const) pct("submit call round trip", k, (l) => l.submitCallMs);
    failed("latency", g, t, b);
  }
  const C = "C 2,000 × sleep 50 ms, 100 slots";
  rows.push(row(C, "drain time", "s", tm.sleepDrain?.seconds, bull.sleepDrain?.seconds, "lower"));
  const ideal = tm.sleepDrain?.idealS ?? bull.sleepDrain?.idealS;
  const cRow = row(C, `× ideal (${ideal?.toFixed(2) ?? "?"} s)`, "×", tm.sleepDrain?.factor, bull.sleepDrain?.factor, "lower");
  cRow.target = "taskmesh ≤ 1.1× ideal";
  if (tm.sleepDrain !== undefined) cRow.pass = tm.sleepDrain.factor <= 1.1;
  rows.push(cRow);
  const D = "D kill -9 of 1 of 2 workers";
  const dLost = row(D, `lost (not succeeded ≤ ${tm.crash?.waitS ?? bull.crash?.waitS ?? 60} s after the kill)`, "tasks", tm.crash?.lost, bull.crash?.lost, "lower");
  dLost.target = "taskmesh 0";
  if (tm.crash !== undefined) dLost.pass = tm.crash.lost === 0;
  rows.push(dLost);
  rows.push(row(D, "duplicated (started more than once)", "tasks", tm.crash?.duplicated, bull.crash?.duplicated, "info"));
  rows.push(row(D, "in flight at the kill (both workers)", "tasks", tm.crash?.inFlightAtKill, bull.crash?.inFlightAtKill, "info"));
  const secs = (c: Crash | undefined): number | undefined => (c === undefined ? undefined : (c.recoveryS ?? Infinity));
  const dRec = row(D, "recovery: kill → every task in flight at the kill finished", "s", secs(tm.crash), secs(bull.crash), "lower");
  dRec.target = "taskmesh ≤ 6 s";
  if (tm.crash !== undefined) dRec.pass = tm.crash.recoveryS !== null && tm.crash.recoveryS <= 6;
  rows.push(dRec);
  const E = "E Redis memory";
  rows.push(
    row(E, "per 1,000 queued tasks", "KB", kb(tm.memory?.queuedBytesPer1000), kb(bull.memory?.queuedBytesPer1000), "lower", { text: "≤ 1.0×", pass: (r) => r <= 1 }),
  );
  rows.push(
    row(E, "per 1,000 finished tasks (results kept)", "KB", kb(tm.memory?.finishedBytesPer1000), kb(bull.memory?.finishedBytesPer1000), "lower", {
      text: "≤ 1.0×",
      pass: (r) => r <= 1,
    }),
  );
  const L = "limits of this machine";
  for (const l of limits.redisEvalsha ?? []) {
    rows.push(row(L, `Redis EVALSHA (trivial script), ${l.clients} client${l.clients === 1 ? "" : "s"}, pipeline ${l.pipeline}`, "calls/s", l.perSecond, undefined, "info"));
  }
  for (const e of limits.grpcEcho ?? []) {
    rows.push(row(L, `bare gRPC stream echo (connect-node), ${e.batch} task${e.batch === 1 ? "" : "s"}/message, ≤${e.window} unanswered`, "tasks/s", e.perSecond, undefined, "info"));
  }
  return rows.filter((r) => r.taskmesh !== undefined || r.bullmq !== undefined);
}

function kb(bytes: number | undefined): number | undefined {
  return bytes === undefined ? undefined : bytes / 1000;
}

/** The targets of the issue, each with PASS/FAIL (undefined when not measured). */
export function targets(rows: Row[]): TargetResult[] {
  return rows
    .filter((r) => r.target !== undefined)
    .map((r) => ({
      name: `${r.group}: ${r.what}`,
      rule: r.target as string,
      value: r.target?.startsWith("taskmesh") === true ? `${fmt(r.taskmesh, r.unit)}${r.unit === "×" ? "×" : ` ${r.unit}`}` : fmtRatio(r.ratio),
      pass: r.pass,
    }));
}

/** A number for the table: thousands separators for rates, 2 decimals for small values. */
export function fmt(v: number | undefined, unit = ""): string {
  if (v === undefined || Number.isNaN(v)) return "—";
  if (v === 0) return "0";
  if (v === Infinity) return "never";
  if (unit === "tasks" || Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function fmtRatio(r: number | undefined): string {
  if (r === undefined) return "—";
  if (r === 0) return "0×";
  if (r >= 100) return `${Math.round(r).toLocaleString("en-US")}×`;
  if (r >= 10) return `${r.toFixed(1)}×`;
  return r >= 0.1 ? `${r.toFixed(2)}×` : `${r.toPrecision(2)}×`;
}

const mark = (p: boolean | undefined): string => (p === undefined ? "" : p ? "PASS" : "FAIL");

/** The table as aligned plain text, for the terminal. */
export function textTable(rows: Row[]): string {
  const cells = rows.map((r) => [
    r.group,
    `${r.what} (${r.unit})`,
    fmt(r.taskmesh, r.unit),
    fmt(r.bullmq, r.unit),
    fmtRatio(r.ratio),
    r.target ?? "",
    mark(r.pass),
  ]);
  const head = ["scenario", "measurement", "taskmesh", "BullMQ", "tm/BullMQ", "target", ""];
  const all = [head, ...cells];
  const w = head.map((_, i) => Math.max(...all.map((c) => (c[i] ?? "").length)));
  const line = (c: string[]): string =>
    c.map((s, i) => (i >= 2 && i <= 4 ? s.padStart(w[i] ?? 0) : s.padEnd(w[i] ?? 0))).join("  ").trimEnd();
  return [line(head), w.map((n) => "-".repeat(n)).join("  "), ...cells.map(line)].join("\n");
}

/** The table as Markdown. */
export function markdownTable(rows: Row[]): string {
  const out = ["| scenario | measurement | unit | taskmesh | BullMQ | taskmesh ÷ BullMQ | target | |", "|---|---|---|--:|--:|--:|---|---|"];
  for (const r of rows) {
    out.push(
      `| ${r.group} | ${r.what} | ${r.unit} | ${fmt(r.taskmesh, r.unit)} | ${fmt(r.bullmq, r.unit)} | ${fmtRatio(r.ratio)} | ${r.target ?? ""} | ${mark(r.pass)} |`,
    );
  }
  return out.join("\n");
}

/** CPU ms per 1,000 tasks by process, one line per scenario and system, as Markdown. */
export function cpuTable(tm: SystemResults, bull: SystemResults): string {
  const roles = ["client", "gateway", "scheduler", "worker", "redis", "etcd"];
  const out = [`| scenario | system | ${roles.join(" | ")} | total |`, `|---|---|${roles.map(() => "--:").join("|")}|--:|`];
  const scen: [string, (s: SystemResults) => { cpuMsPer1000: Record<string, number> } | undefined][] = [
    ["A enqueue one at a time", (s) => s.enqueueSingle],
    ["A enqueue batched", (s) => s.enqueueBatched],
    ["A drain × 1 slot", (s) => s.drain1],
    ["A drain × 50 slots", (s) => s.drain50],
    ["B latency, 1 slot", (s) => s.latency1],
    ["B latency, 50 slots", (s) => s.latency50],
    ["C sleep 50 ms × 100 slots", (s) => s.sleepDrain],
  ];
  for (const [name, get] of scen) {
    for (const [sys, res] of [
      ["taskmesh", tm],
      ["BullMQ", bull],
    ] as const) {
      const c = get(res)?.cpuMsPer1000;
      if (c === undefined) continue;
      const total = Object.values(c).reduce((a, b) => a + b, 0);
      out.push(`| ${name} | ${sys} | ${roles.map((r) => (c[r] === undefined ? "" : c[r].toFixed(0))).join(" | ")} | ${total.toFixed(0)} |`);
    }
  }
  return out.join("\n");
}

// ---- SVG chart ----

const COLORS = { taskmesh: "#2563eb", BullMQ: "#dc2626" } as const;

interface Group {
  label: string;
  taskmesh: number | undefined;
  bullmq: number | undefined;
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** One grouped bar panel (two bars a group), linear or log scale, with value labels. */
function panel(x: number, y: number, w: number, h: number, title: string, unit: string, groups: Group[], log: boolean): string {
  const left = 58;
  const top = 34;
  const bottom = 58;
  const pw = w - left - 12;
  const ph = h - top - bottom;
  const values = groups.flatMap((g) => [g.taskmesh, g.bullmq]).filter((v): v is number => v !== undefined && Number.isFinite(v) && v > 0);
  const vmax = values.length === 0 ? 1 : Math.max(...values);
  const vmin = values.length === 0 ? 1 : Math.min(...values);
  let scale: (v: number) => number;
  const ticks: number[] = [];
  if (log) {
    const lo = 10 ** Math.floor(Math.log10(vmin));
    const hi = 10 ** Math.ceil(Math.log10(vmax));
    const span = Math.max(1e-9, Math.log10(hi) - Math.log10(lo));
    scale = (v) => (Math.max(0, Math.log10(Math.max(v, lo)) - Math.log10(lo)) / span) * ph;
    for (let t = lo; t <= hi * 1.0001; t *= 10) ticks.push(t);
  } else {
    const hi = niceMax(vmax);
    scale = (v) => (v / hi) * ph;
    for (let i = 0; i <= 5; i++) ticks.push((hi * i) / 5);
  }
  const s: string[] = [`<g transform="translate(${x},${y})">`];
  s.push(`<text x="${w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">${esc(title)}</text>`);
  s.push(`<text x="12" y="${top + ph / 2}" font-size="11" transform="rotate(-90 12 ${top + ph / 2})" text-anchor="middle">${esc(unit)}${log ? " (log)" : ""}</text>`);
  for (const t of ticks) {
    const ty = top + ph - scale(t);
    s.push(`<line x1="${left}" x2="${left + pw}" y1="${ty.toFixed(1)}" y2="${ty.toFixed(1)}" stroke="#e5e7eb"/>`);
    s.push(`<text x="${left - 4}" y="${(ty + 4).toFixed(1)}" font-size="10" text-anchor="end">${esc(fmt(t))}</text>`);
  }
  s.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + ph}" stroke="#9ca3af"/>`);
  s.push(`<line x1="${left}" x2="${left + pw}" y1="${top + ph}" y2="${top + ph}" stroke="#9ca3af"/>`);
  const gw = pw / Math.max(1, groups.length);
  const bw = Math.min(34, (gw - 10) / 2);
  for (const [i, g] of groups.entries()) {
    const gx = left + i * gw + gw / 2;
    for (const [j, [name, v]] of ([
      ["taskmesh", g.taskmesh],
      ["BullMQ", g.bullmq],
    ] as const).entries()) {
      const bx = gx - bw + j * bw;
      if (v === undefined || !Number.isFinite(v)) {
        s.push(`<text x="${(bx + bw / 2).toFixed(1)}" y="${top + ph - 3}" font-size="9" text-anchor="middle" fill="#6b7280">n/a</text>`);
        continue;
      }
      const bh = Math.max(1, scale(v));
      s.push(
        `<rect x="${bx.toFixed(1)}" y="${(top + ph - bh).toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${bh.toFixed(1)}" fill="${COLORS[name]}"><title>${name}: ${esc(fmt(v))} ${esc(unit)}</title></rect>`,
      );
      s.push(`<text x="${(bx + bw / 2 - 1).toFixed(1)}" y="${(top + ph - bh - 3).toFixed(1)}" font-size="9" text-anchor="middle">${esc(fmt(v))}</text>`);
    }
    const lines = g.label.split("\n");
    for (const [k, line] of lines.entries()) {
      s.push(`<text x="${gx.toFixed(1)}" y="${top + ph + 14 + k * 12}" font-size="10" text-anchor="middle">${esc(line)}</text>`);
    }
  }
  s.push("</g>");
  return s.join("\n");
}

/** The chart: throughput, latency percentiles at 1 and 50 slots, scenario C and Redis memory. */
export function svgChart(tm: SystemResults, bull: SystemResults, subtitle: string): string {
  const W = 1100;
  const H = 860;
  const pw = W / 2;
  const ph = 390;
  const tput: Group[] = [
    { label: "enqueue\none at a time", taskmesh: tm.enqueueSingle?.perSecond, bullmq: bull.enqueueSingle?.perSecond },
    { label: "enqueue\nbatched", taskmesh: tm.enqueueBatched?.perSecond, bullmq: bull.enqueueBatched?.perSecond },
    { label: "drain\n1 slot", taskmesh: tm.drain1?.perSecond, bullmq: bull.drain1?.perSecond },
    { label: "drain\n50 slots", taskmesh: tm.drain50?.perSecond, bullmq: bull.drain50?.perSecond },
  ];
  const lat = (t: Latency | undefined, b: Latency | undefined): Group[] => [
    ...(["p50", "p95", "p99", "max"] as const).map((k) => ({ label: `start\n${k}`, taskmesh: t?.submitToStartMs[k], bullmq: b?.submitToStartMs[k] })),
    ...(["p50", "p95", "p99", "max"] as const).map((k) => ({ label: `done\n${k}`, taskmesh: t?.submitToDoneMs[k], bullmq: b?.submitToDoneMs[k] })),
  ];
  const mem: Group[] = [
    { label: "KB per 1,000\nqueued", taskmesh: kb(tm.memory?.queuedBytesPer1000), bullmq: kb(bull.memory?.queuedBytesPer1000) },
    { label: "KB per 1,000\nfinished", taskmesh: kb(tm.memory?.finishedBytesPer1000), bullmq: kb(bull.memory?.finishedBytesPer1000) },
    { label: "C: drain time\n% of ideal", taskmesh: pct(tm.sleepDrain?.factor), bullmq: pct(bull.sleepDrain?.factor) },
  ];
  const rate = tm.latency50?.rate ?? bull.latency50?.rate ?? 200;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui, sans-serif">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="26" text-anchor="middle" font-size="18" font-weight="700">taskmesh vs BullMQ — same machine, same Redis, one run</text>`,
    `<text x="${W / 2}" y="46" text-anchor="middle" font-size="11" fill="#4b5563">${esc(subtitle)}</text>`,
    `<rect x="${W / 2 - 250}" y="56" width="12" height="12" fill="${COLORS.taskmesh}"/><text x="${W / 2 - 234}" y="66" font-size="12">taskmesh (end to end through the gateway)</text>`,
    `<rect x="${W / 2 + 80}" y="56" width="12" height="12" fill="${COLORS.BullMQ}"/><text x="${W / 2 + 96}" y="66" font-size="12">BullMQ (Redis directly)</text>`,
    panel(0, 74, pw, ph, "A. Throughput (higher is better)", "tasks/s", tput, false),
    panel(pw, 74, pw, ph, `B. Latency at ${rate}/s, 1 slot (lower is better)`, "ms", lat(tm.latency1, bull.latency1), true),
    panel(0, 74 + ph, pw, ph, `B. Latency at ${rate}/s, 50 slots (lower is better)`, "ms", lat(tm.latency50, bull.latency50), true),
    panel(pw, 74 + ph, pw, ph, "C and E (lower is better)", "KB / % of ideal", mem, false),
    "</svg>",
  ];
  return parts.join("\n");
}

function pct(f: number | undefined): number | undefined {
  return f === undefined ? undefined : f * 100;
}
