import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";

/** Codes worth retrying: the call may succeed if made again unchanged. */
export const RETRYABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.ResourceExhausted,
  Code.Aborted,
  Code.DeadlineExceeded,
]);

/** An INVALID_ARGUMENT error that names the offending field. */
export function invalidArgument(field: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message}`, Code.InvalidArgument);
}

/** A NOT_FOUND error for a named resource. */
export function notFound(what: string, id: string): ConnectError {
  return new ConnectError(`${what} ${JSON.stringify(id)} not found`, Code.NotFound);
}

/**
 * Converts anything thrown inside a handler into a ConnectError fit for the client: ConnectErrors
 * pass through; anything else becomes INTERNAL with a generic message, is logged with its stack,
 * and kept as `cause` (never sent).
 */
export function toConnectError(err: unknown, log: Logger, context: Record<string, unknown> = {}): ConnectError {
  if (err instanceof ConnectError) return err;
  log.error({ err, ...context }, "internal error");
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}
