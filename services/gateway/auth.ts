import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { dependencyUnavailable, failedDependency } from "../../lib/errors.js";
import type { ApiKeyStore, Caller, Scope } from "./api-keys.js";
import type { RateLimiter } from "./rate-limit.js";
import type { ServerOptions } from "../../lib/server.js";

/** The authenticated caller, set by the auth interceptor for the handlers. */
export const CALLER = createContextKey<Caller | undefined>(undefined, { description: "taskmesh caller" });

const WRITES = new Set([
  "SubmitTask",
  "SubmitTasks",
  "CancelTask",
  "RetryTask",
  "CreateSchedule",
  "DeleteSchedule",
  "PauseSchedule",
  "ResumeSchedule",
]);

/** Methods that change what all tenants share: queues and the configuration. */
const CLUSTER_WRITES = new Set([
  "taskmesh.v1.ClusterService/PauseQueue",
  "taskmesh.v1.ClusterService/ResumeQueue",
  "taskmesh.v1.ConfigService/PutConfig",
  "taskmesh.v1.ConfigService/DeleteConfig",
  "taskmesh.v1.ConfigService/RollbackConfig",
  "taskmesh.v1.ConfigService/PromoteGrayConfig",
  "taskmesh.v1.ConfigService/AbandonGrayConfig",
]);

/**
 * The scope a method needs; undefined for methods open to all (health, reflection). Tasks and
 * schedules need the task scopes; API keys and reading the cluster a tenant's `admin` (the key
 * service then keeps it to its own tenant); changing shared things `cluster:admin`.
 */
export function requiredScope(service: string, method: string): Scope | undefined {
  if (service.startsWith("grpc.")) return undefined;
  if (service === "taskmesh.v1.TaskService" || service === "taskmesh.v1.ScheduleService") {
    return WRITES.has(method) ? "tasks:write" : "tasks:read";
  }
  return CLUSTER_WRITES.has(`${service}/${method}`) ? "cluster:admin" : "admin";
}

/**
 * True if a caller with `scopes` may use a method needing `need`: `cluster:admin` implies
 * everything, `admin` everything but `cluster:admin`.
 */
export function allowed(scopes: ReadonlySet<Scope>, need: Scope): boolean {
  if (scopes.has(need) || scopes.has("cluster:admin")) return true;
  return need !== "cluster:admin" && scopes.has("admin");
}

/** Reads the API key from `Authorization: Bearer <key>` or `x-api-key`. */
export function presentedKey(header: (name: string) => string | null | undefined): string | undefined {
  const auth = header("authorization");
  if (auth !== null && auth !== undefined) {
    const m = /^Bearer\s+(\S+)$/i.exec(auth);
    if (m?.[1] !== undefined) return m[1];
  }
  return header("x-api-key") ?? undefined;
}

/** Options for {@link authInterceptor}. */
export interface AuthOptions {
  keys: ApiKeyStore;
  limiter: RateLimiter;
  /** Largest request accepted, in bytes. */
  maxRequestBytes: () => number;
}

/**
 * Authentication, scopes, request size and per-key rate limits, in that order. No key or an
 * unknown key: UNAUTHENTICATED; a key without the method's scope: PERMISSION_DENIED; a request
 * over the size limit: INVALID_ARGUMENT; over the key's rate: RESOURCE_EXHAUSTED with a RetryInfo
 * detail and a `retry-after` header. Resolves with the caller, or undefined for methods open to
 * all (health, reflection). `bytes` is the request's size (Content-Length when the client sent
 * one, else 0 and the transport enforces the limit).
 */
export async function authorize(
  opts: AuthOptions,
  service: string,
  method: string,
  header: (name: string) => string | null | undefined,
  bytes: number,
): Promise<Caller | undefined> {
  const need = requiredScope(service, method);
  if (need === undefined) return undefined;
  const key = presentedKey(header);
  if (key === undefined) throw new ConnectError("an API key is required (Authorization: Bearer <key>)", Code.Unauthenticated);
  const caller = await opts.keys.authenticate(key);
  if (caller === undefined) throw new ConnectError("invalid or revoked API key", Code.Unauthenticated);
  if (!allowed(caller.scopes, need)) {
    throw new ConnectError(`this API key lacks the scope ${need}`, Code.PermissionDenied);
  }
  const max = opts.maxRequestBytes();
  if (bytes > max) throw new ConnectError(`request: ${bytes} bytes is more than the limit of ${max}`, Code.InvalidArgument);
  // The buckets live in Redis: an outage is UNAVAILABLE with a retry hint, as everywhere.
  const decision = await opts.limiter.take(caller.keyId).catch((err: unknown) => {
    throw failedDependency(err) !== undefined ? dependencyUnavailable("redis", err) : err;
  });
  if (!decision.allowed) {
    const seconds = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
    throw new ConnectError(
      "rate limit exceeded for this API key",
      Code.ResourceExhausted,
      { "retry-after": String(seconds) },
      [{ desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: durationFromMs(decision.retryAfterMs) }) }],
    );
  }
  return caller;
}

/**
 * {@link authorize} for every call connect-node serves (Connect, gRPC, gRPC-Web and REST, which
 * runs through the same router); the caller goes to the handlers in the CALLER context value.
 * The gateway's fast gRPC path (public-services.ts) runs the same checks itself.
 */
export function authInterceptor(opts: AuthOptions): Interceptor {
  return (next) => async (req) => {
    const length = Number(req.header.get("content-length") ?? "0");
    const caller = await authorize(opts, req.service.typeName, req.method.name, (n) => req.header.get(n), length);
    if (caller === undefined) return next(req);
    req.contextValues.set(CALLER, caller);
    return next(req);
  };
}

/** Paths whose requests need an API key: RPCs that need a scope (not health or reflection), and the REST API. */
function needsKey(path: string, method: string): boolean {
  if (method === "OPTIONS") return false; // CORS preflights carry no credentials
  if (path.startsWith("/v1/")) return true;
  const m = /^\/([\w.]+)\/(\w+)$/.exec(path);
  return m !== null && requiredScope(m[1] ?? "", m[2] ?? "") !== undefined;
}

/**
 * The gateway's admission (ServerOptions.admit): a request that needs an API key is answered
 * UNAUTHENTICATED before a byte of its body is read unless it carries a key the gateway knows,
 * so that nobody without a key can make it buffer a body. Scopes, sizes and rate limits are
 * checked later, per call ({@link authorize}).
 */
export function keyAdmission(keys: ApiKeyStore): NonNullable<ServerOptions["admit"]> {
  return async (req, refuse) => {
    if (!needsKey(req.path, req.method)) return true;
    const key = presentedKey((name) => {
      const v = req.headers[name];
      return Array.isArray(v) ? v[0] : v;
    });
    if (key === undefined) {
      refuse(new ConnectError("an API key is required (Authorization: Bearer <key>)", Code.Unauthenticated));
      return false;
    }
    if ((await keys.authenticate(key)) === undefined) {
      refuse(new ConnectError("invalid or revoked API key", Code.Unauthenticated));
      return false;
    }
    return true;
  };
}
