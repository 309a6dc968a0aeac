/**
 * The exit codes of `taskmesh`, a contract for scripts (listed in `taskmesh --help`), and the one
 * place that turns an error into a code and a one-line message.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { UsageError } from "./args.js";

/** Exit codes scripts can rely on. */
export const ExitCode = {
  /** Everything worked (and a watched task SUCCEEDED). */
  OK: 0,
  /** The watched task ended FAILED or CANCELLED (`submit --watch`, `watch`). */
  TASK_FAILED: 1,
  /** Bad flags or arguments; nothing was sent. */
  USAGE: 2,
  /** The task, schedule, key or namespace does not exist (NOT_FOUND). */
  NOT_FOUND: 3,
  /** The API key is missing, wrong, revoked or lacks the scope (UNAUTHENTICATED, PERMISSION_DENIED). */
  AUTH: 4,
  /** The gateway could not be reached or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED). */
  UNAVAILABLE: 5,
  /** The server refused the request as invalid (INVALID_ARGUMENT). */
  INVALID_ARGUMENT: 6,
  /** Any other error. */
  ERROR: 7,
  /** Interrupted by Ctrl-C (SIGINT), as shells report it. */
  INTERRUPTED: 130,
} as const;

/** One of the {@link ExitCode} values. */
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** The exit code lines of `taskmesh --help`. */
export const EXIT_CODE_HELP: readonly (readonly [ExitCodeValue, string])[] = [
  [ExitCode.OK, "success"],
  [ExitCode.TASK_FAILED, "the task ended FAILED or CANCELLED (submit --watch, watch)"],
  [ExitCode.USAGE, "usage error: bad flags or arguments (nothing was sent)"],
  [ExitCode.NOT_FOUND, "not found (NOT_FOUND)"],
  [ExitCode.AUTH, "unauthenticated or permission denied: missing, wrong or under-scoped API key"],
  [ExitCode.UNAVAILABLE, "gateway unavailable or deadline exceeded: worth retrying later"],
  [ExitCode.INVALID_ARGUMENT, "invalid argument: the server refused the request (INVALID_ARGUMENT)"],
  [ExitCode.ERROR, "any other error"],
  [ExitCode.INTERRUPTED, "interrupted (Ctrl-C)"],
];

/** Maps a gRPC status code to the CLI's exit code. */
export function exitCodeForCode(code: Code): ExitCodeValue {
  switch (code) {
    case Code.NotFound:
      return ExitCode.NOT_FOUND;
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return ExitCode.AUTH;
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return ExitCode.UNAVAILABLE;
    case Code.InvalidArgument:
      return ExitCode.INVALID_ARGUMENT;
    case Code.Canceled:
      return ExitCode.INTERRUPTED;
    default:
      return ExitCode.ERROR;
  }
}

/** Maps anything thrown by a command to its exit code. */
export function exitCodeFor(err: unknown): ExitCodeValue {
  if (err instanceof UsageError) return ExitCode.USAGE;
  if (err instanceof ConnectError) return exitCodeForCode(err.code);
  return ExitCode.ERROR;
}

/**
 * The lines to print on stderr for an error: `error: <message>` (a ConnectError's message starts
 * with its code name, e.g. `[not_found] task "x" not found`), then one indented line per field
 * violation the server attached. Never a stack trace.
 */
export function errorLines(err: unknown): string[] {
  if (err instanceof ConnectError) {
    const lines = [`error: ${err.message}`];
    for (const d of err.findDetails(BadRequestSchema)) {
      for (const v of d.fieldViolations) lines.push(`  ${v.field}: ${v.description}`);
    }
    return lines;
  }
  if (err instanceof Error) return [`error: ${err.message}`];
  return [`error: ${String(err)}`];
}
