import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Priority, TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";

/** Every real status, in lifecycle order (for filters). */
export const STATUSES: readonly TaskStatus[] = [
  TaskStatus.QUEUED,
  TaskStatus.DELAYED,
  TaskStatus.RUNNING,
  TaskStatus.RETRY_WAIT,
  TaskStatus.SUCCEEDED,
  TaskStatus.FAILED,
  TaskStatus.CANCELLED,
];

/** Every real priority, lowest first. */
export const PRIORITIES: readonly Priority[] = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.CRITICAL];

/** `SUCCEEDED`, `RETRY_WAIT`... (the proto name without its prefix). */
export function statusName(s: TaskStatus): string {
  return TaskStatus[s] ?? `STATUS_${s}`;
}

/** `LOW`, `NORMAL`... */
export function priorityName(p: Priority): string {
  return Priority[p] ?? `PRIORITY_${p}`;
}

/** True once a task can change no more (until RetryTask). */
export function isTerminal(s: TaskStatus): boolean {
  return s === TaskStatus.SUCCEEDED || s === TaskStatus.FAILED || s === TaskStatus.CANCELLED;
}

/** Milliseconds since the epoch, or undefined for an unset timestamp. */
export function ms(t: Timestamp | undefined): number | undefined {
  return t === undefined ? undefined : timestampMs(t);
}

/** `14:03:07` today, `2026-05-01 14:03:07` otherwise; `—` when unset. */
export function clock(t: Timestamp | number | undefined): string {
  const v = typeof t === "number" ? t : ms(t);
  if (v === undefined || v === 0) return "—";
  const d = new Date(v);
  const pad = (n: number, w = 2): string => String(n).padStart(w, "0");
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** A short human duration: `850 ms`, `4.2 s`, `3 min 10 s`, `2 h 5 min`. */
export function span(millis: number | undefined): string {
  if (millis === undefined || !Number.isFinite(millis)) return "—";
  const v = Math.max(0, millis);
  if (v < 1000) return `${Math.round(v)} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(v < 10_000 ? 1 : 0)} s`;
  if (v < 3_600_000) return `${Math.floor(v / 60_000)} min ${Math.floor((v % 60_000) / 1000)} s`;
  return `${Math.floor(v / 3_600_000)} h ${Math.floor((v % 3_600_000) / 60_000)} min`;
}

/** A duration message as {@link span} text. */
export function durationText(d: Duration | undefined): string {
  return d === undefined ? "—" : span(durationMs(d));
}

/** A rate with sensible precision: `0`, `0.35`, `4.2`, `120`. */
export function rate(v: number): string {
  if (v === 0) return "0";
  if (v < 1) return v.toFixed(2);
  if (v < 10) return v.toFixed(1);
  return Math.round(v).toString();
}

/** Pretty JSON for display and editing. */
export function json(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? x.toString() : x), 2) ?? "";
}
