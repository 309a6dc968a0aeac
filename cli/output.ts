/**
 * How the CLI prints: aligned tables and `key: value` views for people, protobuf JSON (`toJson`)
 * for machines (`--json`), and plain ANSI colour only on terminals (never with `NO_COLOR`).
 */
import { toJsonString, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { durationMs, timestampMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Priority, TaskStatus, type Task } from "../gen/taskmesh/v1/task_pb.js";

/** The part of a writable stream the CLI uses (process.stdout, or a buffer in tests). */
export interface OutputStream {
  write(chunk: string): unknown;
  readonly isTTY?: boolean | undefined;
  readonly columns?: number | undefined;
}

/** ANSI styles the CLI uses. */
export type Style = "bold" | "dim" | "red" | "green" | "yellow" | "cyan";

const ANSI: Readonly<Record<Style, string>> = {
  bold: "\x1b[1m",
  dim: "\x1b[2m",
  red: "\x1b[31m",
  green: "\x1b[32m",
  yellow: "\x1b[33m",
  cyan: "\x1b[36m",
};

/** Wraps text in an ANSI style when `enabled`. */
export function paint(enabled: boolean, style: Style, text: string): string {
  return enabled ? `${ANSI[style]}${text}\x1b[0m` : text;
}

/** Where and how a command prints. */
export class Output {
  /** True if stdout gets colours. */
  readonly colorOut: boolean;
  /** True if stderr gets colours. */
  readonly colorErr: boolean;

  /**
   * @param json machine output: protobuf JSON on stdout, nothing decorative
   * @param noColor set when the `NO_COLOR` convention asks for no colours
   */
  constructor(
    readonly stdout: OutputStream,
    readonly stderr: OutputStream,
    readonly json: boolean,
    noColor: boolean,
  ) {
    this.colorOut = !noColor && !json && stdout.isTTY === true;
    this.colorErr = !noColor && stderr.isTTY === true;
  }

  /** Prints lines on stdout. */
  print(...lines: string[]): void {
    for (const l of lines) this.stdout.write(`${l}\n`);
  }

  /** Prints a line on stderr: notes for people that must not disturb what scripts read. */
  note(line: string): void {
    this.stderr.write(`${line}\n`);
  }

  /** Prints one message as (indented) protobuf JSON: the `--json` output of one-shot commands. */
  printJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
    this.stdout.write(`${toJsonString(schema, message, { prettySpaces: 2 })}\n`);
  }

  /** Prints one message as protobuf JSON on one line: the `--json` output of streams. */
  printJsonLine<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
    this.stdout.write(`${toJsonString(schema, message)}\n`);
  }

  /** Prints a table, or `empty` on stderr when there are no rows (so stdout stays parseable). */
  table(headers: readonly string[], rows: readonly (readonly string[])[], empty: string): void {
    if (rows.length === 0) {
      this.note(empty);
      return;
    }
    this.print(...formatTable(headers, rows, (h) => paint(this.colorOut, "bold", h)));
  }

  /** Paints text for stdout. */
  out(style: Style, text: string): string {
    return paint(this.colorOut, style, text);
  }

  /** Paints text for stderr. */
  err(style: Style, text: string): string {
    return paint(this.colorErr, style, text);
  }
}

/** Visible width of a string, ignoring ANSI escapes. */
export function visibleLength(s: string): number {
  return s.replace(/\x1b\[[0-9;]*m/g, "").length;
}

/**
 * Lays out rows in columns two spaces apart (the last column is not padded). `styleHeader` may
 * decorate the header cells after their width is measured.
 */
export function formatTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  styleHeader: (h: string) => string = (h) => h,
): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => visibleLength(r[i] ?? ""))));
  const line = (cells: readonly string[], style: (s: string) => string): string =>
    cells
      .map((c, i) => {
        const pad = i === cells.length - 1 ? "" : " ".repeat(Math.max(0, (widths[i] ?? 0) - visibleLength(c)));
        return style(c) + pad;
      })
      .join("  ")
      .trimEnd();
  return [line(headers, styleHeader), ...rows.map((r) => line(r, (s) => s))];
}

/** `SUCCEEDED` for TaskStatus.SUCCEEDED. */
export function statusName(s: TaskStatus): string {
  return TaskStatus[s] ?? String(s);
}

/** `HIGH` for Priority.HIGH; `-` when unspecified. */
export function priorityName(p: Priority): string {
  return p === Priority.UNSPECIFIED ? "-" : (Priority[p] ?? String(p));
}

/** The colour of a status: green done, red failed, yellow cancelled, cyan running. */
export function statusStyle(s: TaskStatus): Style | undefined {
  switch (s) {
    case TaskStatus.SUCCEEDED:
      return "green";
    case TaskStatus.FAILED:
      return "red";
    case TaskStatus.CANCELLED:
      return "yellow";
    case TaskStatus.RUNNING:
      return "cyan";
    default:
      return undefined;
  }
}

/** A status name, coloured when `color`. */
export function paintStatus(color: boolean, s: TaskStatus): string {
  const style = statusStyle(s);
  return style === undefined ? statusName(s) : paint(color, style, statusName(s));
}

/** True for SUCCEEDED, FAILED and CANCELLED. */
export function isTerminal(s: TaskStatus): boolean {
  return s === TaskStatus.SUCCEEDED || s === TaskStatus.FAILED || s === TaskStatus.CANCELLED;
}

/** Formats milliseconds compactly: `850ms`, `1.5s`, `2m5s`, `3h4m`, `2d5h`. */
export function formatDurationMs(ms: number): string {
  if (ms < 0) return `-${formatDurationMs(-ms)}`;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(ms < 10_000 ? 1 : 0))}s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ""}`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${Math.floor(s / 60) % 60 ? `${Math.floor(s / 60) % 60}m` : ""}`;
  return `${Math.floor(s / 86_400)}d${Math.floor(s / 3600) % 24 ? `${Math.floor(s / 3600) % 24}h` : ""}`;
}

/** Formats a proto Duration; `-` when unset. */
export function formatDuration(d: Duration | undefined): string {
  return d === undefined ? "-" : formatDurationMs(durationMs(d));
}

/** ISO 8601 in UTC, to the millisecond; `-` when unset. */
export function formatTimestamp(t: Timestamp | undefined): string {
  return t === undefined ? "-" : new Date(timestampMs(t)).toISOString();
}

/** How long ago (`3s ago`) or ahead (`in 5s`) a time is; `-` when unset. */
export function formatRelative(t: Timestamp | undefined, now: number): string {
  if (t === undefined) return "-";
  const d = now - timestampMs(t);
  return d >= 0 ? `${formatDurationMs(d)} ago` : `in ${formatDurationMs(-d)}`;
}

/** Compact JSON of a value, shortened to `max` characters with an ellipsis. */
export function compactJson(v: JsonValue | undefined, max = Infinity): string {
  if (v === undefined) return "-";
  return truncate(JSON.stringify(v), max);
}

/** Shortens text to `max` characters, ending with `…` when cut. */
export function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, Math.max(0, max - 1))}…`;
}

/** `a=1, b=2`; `-` when empty. */
export function formatLabels(labels: Readonly<Record<string, string>>): string {
  const e = Object.entries(labels);
  return e.length === 0 ? "-" : e.map(([k, v]) => `${k}=${v}`).join(", ");
}

/** Aligned `key: value` lines. */
export function formatFields(fields: readonly (readonly [string, string])[]): string[] {
  const w = Math.max(...fields.map(([k]) => k.length)) + 1;
  return fields.map(([k, v]) => `${`${k}:`.padEnd(w)}  ${v}`);
}

/** The people view of one task (`taskmesh get`), result and error included. */
export function describeTask(t: Task, now: number, color: boolean): string[] {
  const fields: [string, string][] = [
    ["id", t.id],
    ["type", t.type],
    ["status", paintStatus(color, t.status)],
    ["queue", t.queue],
    ["priority", priorityName(t.priority)],
    ["attempt", `${t.attempt}${t.maxAttempts > 0 ? `/${t.maxAttempts}` : ""}`],
    ["progress", `${t.progress}%${t.progressMessage !== "" ? `  ${t.progressMessage}` : ""}`],
  ];
  if (t.workerId !== "") fields.push(["worker", t.workerId]);
  if (t.tenant !== "") fields.push(["tenant", t.tenant]);
  if (Object.keys(t.labels).length > 0) fields.push(["labels", formatLabels(t.labels)]);
  if (t.idempotencyKey !== "") fields.push(["idempotency key", t.idempotencyKey]);
  if (t.affinityKey !== "") fields.push(["affinity key", t.affinityKey]);
  if (t.timeout !== undefined) fields.push(["timeout", formatDuration(t.timeout)]);
  fields.push(["created", `${formatTimestamp(t.createdAt)} (${formatRelative(t.createdAt, now)})`]);
  if (t.scheduledAt !== undefined) fields.push(["scheduled", `${formatTimestamp(t.scheduledAt)} (${formatRelative(t.scheduledAt, now)})`]);
  if (t.startedAt !== undefined) fields.push(["started", formatTimestamp(t.startedAt)]);
  if (t.finishedAt !== undefined) {
    const took =
      t.startedAt !== undefined ? ` (ran ${formatDurationMs(timestampMs(t.finishedAt) - timestampMs(t.startedAt))})` : "";
    fields.push(["finished", `${formatTimestamp(t.finishedAt)}${took}`]);
  }
  if (t.error !== undefined && (t.error.code !== "" || t.error.message !== "")) {
    const e = `${t.error.code}: ${t.error.message}${t.error.retryable ? " (retryable)" : ""}`;
    fields.push(["error", paint(color, "red", e)]);
  }
  fields.push(["payload", compactJson(t.payload, 200)]);
  // A short result on one line; a long one below, indented, one value per line.
  const result = t.result === undefined ? undefined : JSON.stringify(t.result);
  if (result !== undefined && result.length <= 100) fields.push(["result", result]);
  const lines = formatFields(fields);
  if (result !== undefined && result.length > 100) {
    lines.push("result:", ...JSON.stringify(t.result, null, 2).split("\n").map((l) => `  ${l}`));
  }
  return lines;
}
