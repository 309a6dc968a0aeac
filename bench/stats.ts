/**
 * Small measuring helpers of the side-by-side benchmark: percentiles, a shared wall clock with
 * sub-millisecond resolution, CPU seconds of processes from /proc, and a /proc scan that finds a
 * process by a fragment of its command line.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";

/** Percentiles of a sample, in the sample's unit. */
export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
  max: number;
  n: number;
}

/** Nearest-rank percentiles (p50, p95, p99, max) of `xs`; NaN for an empty sample. */
export function percentiles(xs: readonly number[]): Percentiles {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] ?? NaN;
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: s.at(-1) ?? NaN, n: s.length };
}

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable between processes of this
 * machine (`performance.timeOrigin` is each process's wall-clock start). The BullMQ worker and the
 * taskmesh bench handler stamp task starts with the same expression.
 */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

const CLK_TCK = ((): number => {
  try {
    const v = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    return Number.isFinite(v) && v > 0 ? v : 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) used so far by a process, from /proc/<pid>/stat; NaN when gone. */
export function cpuSeconds(pid: number): number {
  if (pid === process.pid) {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces) start at the last ")".
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after "pid (comm) ".
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Role name → pid of the processes whose CPU a scenario accounts. */
export type ProcessMap = Record<string, number>;

/** CPU seconds per role at one moment. */
export type CpuSnapshot = Record<string, number>;

/** Reads the CPU seconds of every process of the map. */
export function cpuSnapshot(procs: ProcessMap): CpuSnapshot {
  const s: CpuSnapshot = {};
  for (const [role, pid] of Object.entries(procs)) s[role] = cpuSeconds(pid);
  return s;
}

/** CPU milliseconds per 1,000 tasks of each role between two snapshots (roles in both only). */
export function cpuPer1000(before: CpuSnapshot, after: CpuSnapshot, tasks: number): Record<string, number> {
  const r: Record<string, number> = {};
  for (const [role, end] of Object.entries(after)) {
    const start = before[role];
    if (start === undefined || !Number.isFinite(start) || !Number.isFinite(end)) continue;
    r[role] = ((end - start) * 1000 * 1000) / tasks;
  }
  return r;
}

/**
 * The pid of a live process whose command line contains `fragment`, other than this one; used
 * to read a taskmesh worker's CPU before `Mesh.addWorker` (which waits for health) has resolved.
 */
export function pidByCommandLine(fragment: string): number | undefined {
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, "utf8");
      if (cmd.includes(fragment)) return Number(name);
    } catch {
      // The process ended while we looked.
    }
  }
  return undefined;
}

/** Resolves after `ms` (for pacing and polling intervals, never to wait for a condition). */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs `fn(i)` for i in [0, n) with at most `width` calls in flight; resolves to the results in order. */
export async function pool<T>(n: number, width: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(n);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < n; i = next++) out[i] = await fn(i);
  };
  await Promise.all(Array.from({ length: Math.min(width, n) }, lane));
  return out;
}
