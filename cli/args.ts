/**
 * Parsing of command-line values: durations, labels, enums, numbers and JSON documents. Every
 * function throws {@link UsageError} naming the flag, so a typo ends with exit code 2 and a
 * message that says which flag was wrong and what was expected.
 */
import { readFile } from "node:fs/promises";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { Priority, TaskStatus } from "../gen/taskmesh/v1/task_pb.js";

/** A mistake in the command line (unknown flag, missing argument, malformed value): exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
  /** The command whose usage to point at (`["config", "set"]`), when known. */
  readonly command: readonly string[] | undefined;

  constructor(message: string, command?: readonly string[]) {
    super(message);
    this.command = command;
  }
}

const DURATION_UNITS_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};
const DURATION = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g;

/**
 * Parses a duration such as `500ms`, `5s`, `1.5s`, `1m30s`, `2h` or `1d` into milliseconds
 * (rounded to whole milliseconds). `0` alone is accepted; any other bare number is refused because
 * its unit would be a guess.
 */
export function parseDuration(text: string, flag: string): number {
  const t = text.trim();
  if (t === "0") return 0;
  if (!DURATION.test(t)) {
    throw new UsageError(`${flag}: expected a duration like 500ms, 5s, 1m30s or 2h, got ${JSON.stringify(text)}`);
  }
  let ms = 0;
  for (const m of t.matchAll(DURATION_PART)) {
    ms += Number(m[1]) * (DURATION_UNITS_MS[m[2] ?? ""] ?? 0);
  }
  if (!Number.isFinite(ms) || ms > Number.MAX_SAFE_INTEGER) throw new UsageError(`${flag}: duration too large`);
  return Math.round(ms);
}

/**
 * Parses `key=value` pairs (from a repeatable flag) into a map. The key must not be empty; the value
 * may be. A key given twice is refused rather than silently overwritten.
 */
export function parseLabels(pairs: readonly string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const [key, value] = parseLabel(p, flag);
    if (Object.hasOwn(out, key)) throw new UsageError(`${flag}: key ${JSON.stringify(key)} given twice`);
    out[key] = value;
  }
  return out;
}

/** Parses one `key=value` pair. */
export function parseLabel(pair: string, flag: string): [string, string] {
  const eq = pair.indexOf("=");
  if (eq <= 0) throw new UsageError(`${flag}: expected key=value, got ${JSON.stringify(pair)}`);
  return [pair.slice(0, eq), pair.slice(eq + 1)];
}

/** The priorities a user may name, lowest first. */
export const PRIORITY_NAMES = ["low", "normal", "high", "critical"] as const;

/** Parses `low|normal|high|critical` (any case; `PRIORITY_HIGH` also works). */
export function parsePriority(text: string, flag = "--priority"): Priority {
  switch (text.toLowerCase().replace(/^priority_/, "")) {
    case "low":
      return Priority.LOW;
    case "normal":
      return Priority.NORMAL;
    case "high":
      return Priority.HIGH;
    case "critical":
      return Priority.CRITICAL;
    default:
      throw new UsageError(`${flag}: expected one of ${PRIORITY_NAMES.join(", ")}, got ${JSON.stringify(text)}`);
  }
}

/** The statuses a user may filter by. */
export const STATUS_NAMES = ["queued", "delayed", "running", "retry_wait", "succeeded", "failed", "cancelled"] as const;

/** Parses a task status such as `failed`, `retry-wait` or `TASK_STATUS_QUEUED` (any case). */
export function parseStatus(text: string, flag = "--status"): TaskStatus {
  const name = text.toLowerCase().replace(/^task_status_/, "").replaceAll("-", "_");
  switch (name) {
    case "queued":
      return TaskStatus.QUEUED;
    case "delayed":
      return TaskStatus.DELAYED;
    case "running":
      return TaskStatus.RUNNING;
    case "retry_wait":
      return TaskStatus.RETRY_WAIT;
    case "succeeded":
      return TaskStatus.SUCCEEDED;
    case "failed":
      return TaskStatus.FAILED;
    case "cancelled":
    case "canceled":
      return TaskStatus.CANCELLED;
    default:
      throw new UsageError(`${flag}: expected one of ${STATUS_NAMES.join(", ")}, got ${JSON.stringify(text)}`);
  }
}

/** Parses a whole number in `[min, max]` (a 32-bit proto field by default). */
export function parseInteger(text: string, flag: string, min = 0, max = 2_147_483_647): number {
  if (!/^-?\d+$/.test(text.trim())) throw new UsageError(`${flag}: expected a whole number, got ${JSON.stringify(text)}`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${flag}: must be between ${min} and ${max}, got ${text}`);
  return n;
}

/** Parses a non-negative int64 (a config revision). */
export function parseRevision(text: string, flag: string): bigint {
  if (!/^\d{1,19}$/.test(text.trim())) throw new UsageError(`${flag}: expected a revision number, got ${JSON.stringify(text)}`);
  const n = BigInt(text.trim());
  if (n > 0x7fff_ffff_ffff_ffffn) throw new UsageError(`${flag}: revision too large`);
  return n;
}

/** Parses JSON text that must be an object (a task payload, a config document). */
export function parseJsonObject(text: string, what: string): JsonObject {
  let v: JsonValue;
  try {
    v = JSON.parse(text) as JsonValue;
  } catch (err) {
    throw new UsageError(`${what}: not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new UsageError(`${what}: expected a JSON object, got ${Array.isArray(v) ? "an array" : v === null ? "null" : typeof v}`);
  }
  return v;
}

/**
 * Reads a JSON object given on the command line either literally (`'{"a":1}'`), from a file
 * (`@payload.json`) or from standard input (`@-`).
 */
export async function readJsonObjectArg(
  arg: string,
  what: string,
  readStdin: () => Promise<string>,
): Promise<JsonObject> {
  if (!arg.startsWith("@")) return parseJsonObject(arg, what);
  const path = arg.slice(1);
  if (path === "") throw new UsageError(`${what}: expected @<file> or @- for standard input`);
  let text: string;
  try {
    text = path === "-" ? await readStdin() : await readFile(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`${what}: cannot read ${path === "-" ? "standard input" : path}${code !== undefined ? ` (${code})` : ""}`);
  }
  return parseJsonObject(text, `${what} (${path === "-" ? "stdin" : path})`);
}
