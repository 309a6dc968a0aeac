import type { DescService } from "@bufbuild/protobuf";
import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import { ApiKeyService } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { monotonicFactory } from "ulid";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { toConnectError } from "../../lib/errors.js";
import { headerValue, type FastRoutes } from "../../lib/grpc-fast.js";
import { pooledRandom } from "../../lib/random.js";
import { AUTHOR_HEADER, REQUEST_ID_HEADER, TENANT_HEADER } from "../../lib/task-types.js";
import { currentTraceparent } from "../../lib/tracing.js";
import { apiKeyService } from "./api-key-service.js";
import type { ApiKeyStore } from "./api-keys.js";
import { authorize, CALLER, type AuthOptions } from "./auth.js";
import type { Upstreams } from "./upstreams.js";

/** What the gateway's public services forward to. */
export interface GatewayUpstreams {
  schedulers: Upstreams<typeof SchedulerService>;
  /** The same scheduler replicas, for ScheduleService. */
  schedules: Upstreams<typeof ScheduleService>;
  config: Upstreams<typeof ConfigService>;
  keys: ApiKeyStore;
  logger: Logger;
}

/** Headers that go along to the internal services: tenant, author, trace context. */
function forwardHeaders(ctx: HandlerContext): Record<string, string> {
  // The auth interceptor has set the caller before any handler runs.
  const caller = ctx.values.get(CALLER);
  if (caller === undefined) throw new ConnectError("unauthenticated", Code.Unauthenticated);
  const headers: Record<string, string> = { [TENANT_HEADER]: caller.tenant, [AUTHOR_HEADER]: caller.keyId };
  // The gateway's own span (tracingInterceptor) is the parent of the upstream call's. Without one
  // (tracing off, or a REST call outside the interceptor) the caller's context goes on unchanged.
  const trace = currentTraceparent() ?? ctx.requestHeader.get("traceparent");
  if (trace !== null) headers.traceparent = trace;
  const state = ctx.requestHeader.get("tracestate");
  if (trace !== null && state !== null) headers.tracestate = state;
  return headers;
}

/**
 * Request ids of forwarded submits: ULIDs, monotonic in this process. The scheduler derives the
 * new tasks' ids from them, which makes a submit safe to repeat on another replica.
 */
const nextRequestId = monotonicFactory(pooledRandom());

/** Methods without side effects. */
const READ_METHOD = /^(Get|List)/;
/**
 * Writes that are safe to repeat: submits (they carry a request id, see REQUEST_ID_HEADER) and
 * writes whose repetition changes nothing more (cancel, pause, resume).
 */
const REPEATABLE_WRITES = new Set(["SubmitTask", "SubmitTasks", "CancelTask", "PauseQueue", "ResumeQueue", "PauseSchedule", "ResumeSchedule"]);
/** Submits: each forwarded one gets a request id. */
const SUBMITS = new Set(["SubmitTask", "SubmitTasks"]);

/**
 * True when `method` may be sent again to another replica after the first one failed (or went
 * silent) with the request possibly delivered: reads and {@link REPEATABLE_WRITES}. Other writes
 * (RetryTask, CreateSchedule, DeleteSchedule, configuration writes) move on only when the
 * request was surely not sent (connection refused, breaker open).
 */
export function repeatable(method: string): boolean {
  return READ_METHOD.test(method) || REPEATABLE_WRITES.has(method);
}

/** Seconds from a RetryInfo detail, rounded up (at least 1); undefined without one. */
function retryInfoSeconds(err: ConnectError): number | undefined {
  try {
    for (const info of err.findDetails(RetryInfoSchema)) {
      const d = info.retryDelay;
      if (d !== undefined) return Math.max(1, Math.ceil((Number(d.seconds) * 1000 + d.nanos / 1e6) / 1000));
    }
  } catch {
    // a detail that does not decode gives no hint
  }
  return undefined;
}

/**
 * An upstream error as the gateway's own: same code, message and details, but none of the
 * upstream response's headers and trailers (content-type, grpc-status…), which would corrupt the
 * gateway's response in another protocol — only `retry-after` goes along (made from the error's
 * RetryInfo when the upstream sent only that, as a trailers-only gRPC answer does).
 */
function relay(err: unknown, log: Logger): ConnectError {
  const e = toConnectError(err, log);
  const metadata = new Headers();
  const retryAfter = e.metadata.get("retry-after") ?? retryInfoSeconds(e)?.toString() ?? null;
  if (retryAfter !== null) metadata.set("retry-after", retryAfter);
  const out = new ConnectError(e.rawMessage, e.code, metadata, undefined, e.cause);
  out.details.push(...e.details);
  return out;
}

/**
 * The public services: thin forwarders to the scheduler replicas (tasks, cluster, schedules) and
 * the config service, with the caller's tenant in a header, plus ApiKeyService served here.
 * Errors keep their codes; anything else becomes INTERNAL without details.
 */
export function gatewayRoutes(up: GatewayUpstreams): (router: ConnectRouter) => void {
  const log = up.logger.child({ component: "gateway" });
  type CallOptions = { signal: AbortSignal; timeoutMs: number; headers: Record<string, string> };
  const unary =
    <S extends typeof SchedulerService | typeof ScheduleService | typeof ConfigService>(u: Upstreams<S>) =>
    async <T>(ctx: HandlerContext, fn: (client: ReturnType<Upstreams<S>["stream"]>, o: CallOptions) => Promise<T>): Promise<T> => {
      try {
        const headers = forwardHeaders(ctx);
        const method = ctx.method.name;
        if (SUBMITS.has(method)) headers[REQUEST_ID_HEADER] = nextRequestId();
        return await u.call((client, o) => fn(client, { ...o, headers }), repeatable(method), {
          signal: ctx.signal,
          timeoutMs: ctx.timeoutMs(),
        });
      } catch (err) {
        throw relay(err, log);
      }
    };
  const stream = async function* <S extends typeof SchedulerService | typeof ConfigService, T>(
    u: Upstreams<S>,
    ctx: HandlerContext,
    fn: (client: ReturnType<Upstreams<S>["stream"]>, o: { signal: AbortSignal; headers: Record<string, string> }) => AsyncIterable<T>,
  ): AsyncGenerator<T> {
    try {
      yield* fn(u.stream(), { signal: ctx.signal, headers: forwardHeaders(ctx) });
    } catch (err) {
      throw relay(u.streamError(err, ctx.signal), log);
    }
  };
  // Whether a call may be repeated on another replica follows from its method (see repeatable).
  const write = unary(up.schedulers);
  const read = write;
  const sWrite = unary(up.schedules);
  const sRead = sWrite;
  const cWrite = unary(up.config);
  const cRead = cWrite;

  const tasks: ServiceImpl<typeof TaskService> = {
    submitTask: (req, ctx) => write(ctx, (c, o) => c.submitTask(req, o)),
    submitTasks: (req, ctx) => write(ctx, (c, o) => c.submitTasks(req, o)),
    getTask: (req, ctx) => read(ctx, (c, o) => c.getTask(req, o)),
    listTasks: (req, ctx) => read(ctx, (c, o) => c.listTasks(req, o)),
    cancelTask: (req, ctx) => write(ctx, (c, o) => c.cancelTask(req, o)),
    retryTask: (req, ctx) => write(ctx, (c, o) => c.retryTask(req, o)),
    watchTask: (req, ctx) => stream(up.schedulers, ctx, (c, o) => c.watchTask(req, o)),
  };
  const cluster: ServiceImpl<typeof ClusterService> = {
    listWorkers: (req, ctx) => read(ctx, (c, o) => c.listWorkers(req, o)),
    getClusterStatus: (req, ctx) => read(ctx, (c, o) => c.getClusterStatus(req, o)),
    pauseQueue: (req, ctx) => write(ctx, (c, o) => c.pauseQueue(req, o)),
    resumeQueue: (req, ctx) => write(ctx, (c, o) => c.resumeQueue(req, o)),
    watchWorkers: (req, ctx) => stream(up.schedulers, ctx, (c, o) => c.watchWorkers(req, o)),
  };
  const schedules: ServiceImpl<typeof ScheduleService> = {
    createSchedule: (req, ctx) => sWrite(ctx, (c, o) => c.createSchedule(req, o)),
    getSchedule: (req, ctx) => sRead(ctx, (c, o) => c.getSchedule(req, o)),
    listSchedules: (req, ctx) => sRead(ctx, (c, o) => c.listSchedules(req, o)),
    deleteSchedule: (req, ctx) => sWrite(ctx, (c, o) => c.deleteSchedule(req, o)),
    pauseSchedule: (req, ctx) => sWrite(ctx, (c, o) => c.pauseSchedule(req, o)),
    resumeSchedule: (req, ctx) => sWrite(ctx, (c, o) => c.resumeSchedule(req, o)),
  };
  const config: ServiceImpl<typeof ConfigService> = {
    getConfig: (req, ctx) => cRead(ctx, (c, o) => c.getConfig(req, o)),
    putConfig: (req, ctx) => cWrite(ctx, (c, o) => c.putConfig(req, o)),
    deleteConfig: (req, ctx) => cWrite(ctx, (c, o) => c.deleteConfig(req, o)),
    listConfigs: (req, ctx) => cRead(ctx, (c, o) => c.listConfigs(req, o)),
    getConfigHistory: (req, ctx) => cRead(ctx, (c, o) => c.getConfigHistory(req, o)),
    rollbackConfig: (req, ctx) => cWrite(ctx, (c, o) => c.rollbackConfig(req, o)),
    promoteGrayConfig: (req, ctx) => cWrite(ctx, (c, o) => c.promoteGrayConfig(req, o)),
    abandonGrayConfig: (req, ctx) => cWrite(ctx, (c, o) => c.abandonGrayConfig(req, o)),
    watchConfig: (req, ctx) => stream(up.config, ctx, (c, o) => c.watchConfig(req, o)),
  };
  const keys = apiKeyService(up.keys);
  return (router) => {
    router.service(TaskService, tasks);
    router.service(ScheduleService, schedules);
    router.service(ClusterService, cluster);
    router.service(ConfigService, config);
    router.service(ApiKeyService, keys);
  };
}

/**
 * The gateway's fast gRPC path (lib/grpc-fast.ts): every forwarded unary method, for clients
 * speaking plain gRPC with binary protobuf. The request bytes go to the replica as they came —
 * never decoded here — after the same checks the auth interceptor makes (key, scope, size, rate
 * limit), with the caller's tenant, key id and trace context in headers, through the same
 * upstream policies (breakers, deadline, retries for reads). The answer's bytes come back as
 * they are; errors keep code, message and details as on the connect path (see {@link relay}).
 */
export function gatewayFastRoutes(up: GatewayUpstreams, auth: AuthOptions): FastRoutes {
  const log = up.logger.child({ component: "gateway" });
  const routes: FastRoutes = new Map();
  const add = (pub: DescService, upstream: Pick<Upstreams<DescService>, "callRaw">, upstreamService: string): void => {
    for (const m of pub.methods) {
      if (m.methodKind !== "unary") continue;
      const to = `/${upstreamService}/${m.name}`;
      const idempotent = repeatable(m.name);
      const submit = SUBMITS.has(m.name);
      routes.set(`/${pub.typeName}/${m.name}`, async (call) => {
        const header = (name: string): string | undefined => headerValue(call.headers, name);
        try {
          const caller = await authorize(auth, pub.typeName, m.name, header, call.message.length);
          // Every forwarded method needs a scope; authorize() returns no caller only for open ones.
          if (caller === undefined) throw new ConnectError("unauthenticated", Code.Unauthenticated);
          const headers: Record<string, string> = { [TENANT_HEADER]: caller.tenant, [AUTHOR_HEADER]: caller.keyId };
          if (submit) headers[REQUEST_ID_HEADER] = nextRequestId();
          const trace = header("traceparent");
          if (trace !== undefined) {
            headers.traceparent = trace;
            const state = header("tracestate");
            if (state !== undefined) headers.tracestate = state;
          }
          return await upstream.callRaw(to, call.message, headers, idempotent, call.signal, call.timeoutMs());
        } catch (err) {
          throw relay(err, log);
        }
      });
    }
  };
  add(TaskService, up.schedulers, SchedulerService.typeName);
  add(ClusterService, up.schedulers, SchedulerService.typeName);
  add(ScheduleService, up.schedules, ScheduleService.typeName);
  add(ConfigService, up.config, ConfigService.typeName);
  return routes;
}
