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
import { toConnectError } from "../../lib/errors.js";
import { headerValue, type FastRoutes } from "../../lib/grpc-fast.js";
import { AUTHOR_HEADER, TENANT_HEADER } from "../../lib/task-types.js";
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
 * An upstream error as the gateway's own: same code, message and details, but none of the
 * upstream response's headers and trailers (content-type, grpc-status…), which would corrupt the
 * gateway's response in another protocol — only `retry-after` goes along.
 */
function relay(err: unknown, log: Logger): ConnectError {
  const e = toConnectError(err, log);
  const metadata = new Headers();
  const retryAfter = e.metadata.get("retry-after");
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
  const unary =
    <S extends typeof SchedulerService | typeof ScheduleService | typeof ConfigService>(u: Upstreams<S>, idempotent: boolean) =>
    async <T>(ctx: HandlerContext, fn: (client: ReturnType<Upstreams<S>["stream"]>, o: { signal: AbortSignal; headers: Record<string, string> }) => Promise<T>): Promise<T> => {
      try {
        const headers = forwardHeaders(ctx);
        return await u.call((client, signal) => fn(client, { signal: AbortSignal.any([ctx.signal, signal]), headers }), idempotent);
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
      throw relay(err, log);
    }
  };
  const write = unary(up.schedulers, false);
  const read = unary(up.schedulers, true);
  const sWrite = unary(up.schedules, false);
  const sRead = unary(up.schedules, true);
  const cWrite = unary(up.config, false);
  const cRead = unary(up.config, true);

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

/** Methods without side effects: retried on another replica when one is unreachable. */
const READ_METHOD = /^(Get|List)/;

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
      const idempotent = READ_METHOD.test(m.name);
      routes.set(`/${pub.typeName}/${m.name}`, async (call) => {
        const header = (name: string): string | undefined => headerValue(call.headers, name);
        const caller = await authorize(auth, pub.typeName, m.name, header, call.message.length);
        // Every forwarded method needs a scope; authorize() returns no caller only for open ones.
        if (caller === undefined) throw new ConnectError("unauthenticated", Code.Unauthenticated);
        const headers: Record<string, string> = { [TENANT_HEADER]: caller.tenant, [AUTHOR_HEADER]: caller.keyId };
        const trace = header("traceparent");
        if (trace !== undefined) {
          headers.traceparent = trace;
          const state = header("tracestate");
          if (state !== undefined) headers.tracestate = state;
        }
        try {
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
