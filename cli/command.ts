/**
 * What a command is: its words, flags, positional arguments and the function that runs it, plus
 * the context every command gets (output, clients, cancellation).
 */
import { UsageError } from "./args.js";
import type { GatewayClients } from "./connection.js";
import type { Output } from "./output.js";

/** One flag of a command. */
export interface FlagSpec {
  type: "string" | "boolean";
  /** May be given several times (values collected in order). */
  multiple?: boolean;
  short?: string;
  /** The value's placeholder in help, e.g. `JSON|@file`. */
  value?: string;
  description: string;
}

/** The values of parsed flags, read through typed accessors. */
export class Flags {
  constructor(
    private readonly values: Readonly<Record<string, string | boolean | (string | boolean)[] | undefined>>,
  ) {}

  /** A string flag's value (the last one if given twice), or undefined. */
  string(name: string): string | undefined {
    const v = this.values[name];
    if (Array.isArray(v)) return v.length === 0 ? undefined : String(v[v.length - 1]);
    return typeof v === "string" ? v : undefined;
  }

  /** A boolean flag. */
  boolean(name: string): boolean {
    return this.values[name] === true;
  }

  /** Every value of a repeatable flag, in order. */
  strings(name: string): string[] {
    const v = this.values[name];
    if (v === undefined) return [];
    return (Array.isArray(v) ? v : [v]).map(String);
  }
}

/** What a running command may use. */
export interface CommandContext {
  out: Output;
  /** The gateway's clients; connecting is deferred until a command asks. */
  clients(): Promise<GatewayClients>;
  /** Aborted on Ctrl-C. */
  signal: AbortSignal;
  /** Reads all of standard input (for `@-`). */
  readStdin(): Promise<string>;
  /** The clock, injectable for tests. */
  now(): number;
  /** Waits `ms`; rejects when {@link signal} aborts. Injectable for tests. */
  sleep(ms: number): Promise<void>;
}

/** One command (`submit`, `config set`, …). */
export interface CommandSpec {
  /** The words after `taskmesh`, e.g. `["config", "set"]`. */
  path: readonly string[];
  /** The positional synopsis, e.g. `<namespace> <json|@file>`. */
  args: string;
  /** One line for the command list. */
  summary: string;
  /** More help text, shown by `--help`. */
  details?: string;
  flags: Readonly<Record<string, FlagSpec>>;
  /** Fewest positional arguments. */
  minArgs: number;
  /** Most positional arguments (Infinity for a list). */
  maxArgs: number;
  /** Runs the command; resolves with the exit code. */
  run(ctx: CommandContext, args: readonly string[], flags: Flags): Promise<number>;
}

/** Deadline of one unary call, so a gateway that accepts but never answers cannot hang a script. */
export const CALL_TIMEOUT_MS = 30_000;

/** The options of a unary call: the command's signal and {@link CALL_TIMEOUT_MS}. */
export function callOptions(ctx: CommandContext): { signal: AbortSignal; timeoutMs: number } {
  return { signal: ctx.signal, timeoutMs: CALL_TIMEOUT_MS };
}

/** How long to wait before resuming a broken stream the `attempt`-th time: 200 ms doubling to 2 s. */
export function backoffMs(attempt: number): number {
  return Math.min(2000, 100 * 2 ** attempt);
}

/** The argument at `i`, which the positional-count check guarantees exists. */
export function arg(args: readonly string[], i: number): string {
  const v = args[i];
  if (v === undefined) throw new UsageError(`missing argument ${i + 1}`);
  return v;
}
