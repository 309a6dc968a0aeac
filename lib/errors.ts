import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import { ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";

/** Codes worth retrying: the call may succeed if made again unchanged. */
export const RETRYABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.ResourceExhausted,
  Code.Aborted,
  Code.DeadlineExceeded,
]);

/** `google.rpc.ErrorInfo.domain` of taskmesh's own error reasons. */
export const ERROR_DOMAIN = "taskmesh.dev";

/**
 * `google.rpc.ErrorInfo.reason` of an UNAVAILABLE that a healthy service returns because a
 * dependency of its own (Redis, etcd) is out of reach. Calling another replica of that service
 * would not help (they share the dependency), and the replica is not at fault: the gateway
 * relays such errors as they are, without counting them against the replica.
 */
export const DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE";

/** How long a client should wait before retrying a call refused for a failed dependency. @default */
export const DEPENDENCY_RETRY_AFTER_MS = 1000;

/** An INVALID_ARGUMENT error that names the offending field. */
export function invalidArgument(field: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message}`, Code.InvalidArgument);
}

/** A NOT_FOUND error for a named resource. */
export function notFound(what: string, id: string): ConnectError {
  return new ConnectError(`${what} ${JSON.stringify(id)} not found`, Code.NotFound);
}

/**
 * An UNAVAILABLE error with a retry hint in both forms clients read: a `retry-after` header
 * (whole seconds, at least 1; REST sends it as the HTTP header) and a `google.rpc.RetryInfo`
 * detail (which survives every protocol, trailers-only gRPC responses included). With `reason`,
 * a `google.rpc.ErrorInfo` detail of {@link ERROR_DOMAIN} says why.
 */
export function unavailable(
  message: string,
  retryAfterMs: number,
  opts: { reason?: string; metadata?: Record<string, string>; cause?: unknown } = {},
): ConnectError {
  const ms = Math.max(0, Math.ceil(retryAfterMs));
  const err = new ConnectError(
    message,
    Code.Unavailable,
    { "retry-after": String(Math.max(1, Math.ceil(ms / 1000))) },
    undefined,
    opts.cause,
  );
  err.details.push({ desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: durationFromMs(ms) }) });
  if (opts.reason !== undefined) {
    err.details.push({
      desc: ErrorInfoSchema,
      value: create(ErrorInfoSchema, { reason: opts.reason, domain: ERROR_DOMAIN, metadata: opts.metadata ?? {} }),
    });
  }
  return err;
}

/** UNAVAILABLE because `dependency` ("redis", "etcd") is out of reach; marked {@link DEPENDENCY_UNAVAILABLE}. */
export function dependencyUnavailable(dependency: string, cause?: unknown, retryAfterMs = DEPENDENCY_RETRY_AFTER_MS): ConnectError {
  return unavailable(`${dependency} unavailable, retry later`, retryAfterMs, {
    reason: DEPENDENCY_UNAVAILABLE,
    metadata: { dependency },
    cause,
  });
}

/** True for an error marked {@link DEPENDENCY_UNAVAILABLE} (as built here, or as received from a peer). */
export function isDependencyUnavailable(err: ConnectError): boolean {
  if (err.code !== Code.Unavailable) return false;
  try {
    return err.findDetails(ErrorInfoSchema).some((d) => d.reason === DEPENDENCY_UNAVAILABLE && d.domain === ERROR_DOMAIN);
  } catch {
    return false; // a detail that does not decode is no marker
  }
}

/** Node's socket errors: the peer is not (or no longer) reachable. */
const SOCKET_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED"]);
/** Redis replies that mean "this server cannot serve now" (loading, failing over, cluster down…). */
const REDIS_TRANSIENT_REPLY = /^(LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|MISCONF|NOREPLICAS|BUSY|NOMASTERLINK|UNBLOCKED)\b/;
/** ioredis's own errors while it has no usable connection. */
const IOREDIS_MESSAGE =
  /^(Connection is closed\.?|Command timed out|Stream isn't writeable|Reached the max retries per request limit|Failed to refresh slots cache|None of startup nodes is available|Too many Cluster redirections)/;
/** etcd3's errors for an etcd that is out of reach (its pool's circuit breaker included). */
const ETCD_UNAVAILABLE = new Set([
  "GRPCUnavailableError",
  "GRPCDeadlineExceededError",
  "GRPCConnectFailedError",
  "GRPCCancelledError",
  "GRPCResourceExhastedError",
  "ClientClosedError",
  "BrokenCircuitError",
  "IsolatedCircuitError",
]);

function errorChain(err: unknown): Error[] {
  const chain: Error[] = [];
  for (let e = err; e instanceof Error && !chain.includes(e) && chain.length < 8; e = (e as { cause?: unknown }).cause) chain.push(e);
  return chain;
}

/**
 * Which dependency an error says is out of reach: "redis" for ioredis's connection errors and
 * Redis's transient replies (LOADING, READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN…), "etcd" for
 * etcd3's unavailable/deadline errors, "a dependency" for a bare socket error; undefined for
 * anything else (a bug, bad data: INTERNAL).
 */
export function failedDependency(err: unknown): string | undefined {
  for (const e of errorChain(err)) {
    const name = e.constructor.name === "Error" ? e.name : e.constructor.name;
    if (name === "MaxRetriesPerRequestError" || name === "ClusterAllFailedError") return "redis";
    if (name === "ReplyError" && REDIS_TRANSIENT_REPLY.test(e.message)) return "redis";
    if (IOREDIS_MESSAGE.test(e.message)) return "redis";
    if (ETCD_UNAVAILABLE.has(name) || ETCD_UNAVAILABLE.has(e.name)) return "etcd";
  }
  for (const e of errorChain(err)) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && SOCKET_CODES.has(code)) return "a dependency";
  }
  return undefined;
}

/**
 * Converts anything thrown inside a handler into a ConnectError fit for the client: ConnectErrors
 * pass through; a failing dependency (see {@link failedDependency}) becomes UNAVAILABLE with a
 * retry hint and the {@link DEPENDENCY_UNAVAILABLE} marker, logged as a warning; anything else
 * becomes INTERNAL with a generic message, is logged with its stack, and kept as `cause` (never sent).
 */
export function toConnectError(err: unknown, log: Logger, context: Record<string, unknown> = {}): ConnectError {
  if (err instanceof ConnectError) return err;
  const dependency = failedDependency(err);
  if (dependency !== undefined) {
    log.warn({ err, dependency, ...context }, "dependency unavailable");
    return dependencyUnavailable(dependency, err);
  }
  log.error({ err, ...context }, "internal error");
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}
