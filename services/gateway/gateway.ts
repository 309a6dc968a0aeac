import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { join } from "node:path";
import { createRouterTransport } from "@connectrpc/connect";
import { createEtcd, type EtcdSecurity } from "../../lib/etcd.js";
import { createRedis, type RedisTls } from "../../lib/redis.js";
import type { Logger } from "pino";
import { ApiKeyService, file_taskmesh_v1_api_key_service } from "../../gen/taskmesh/v1/api_key_service_pb.js";
import { ClusterService, file_taskmesh_v1_cluster_service } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService, file_taskmesh_v1_config_service } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService, file_taskmesh_v1_schedule_service } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { TaskService, file_taskmesh_v1_task_service } from "../../gen/taskmesh/v1/task_service_pb.js";
import { GatewayConfigSchema } from "../../gen/taskmesh/v1/config_service_pb.js";
import { connectConfig, decodeConfig } from "../../lib/config-client.js";
import { etcdKeys, parseServiceRecord, type ServiceRecord } from "../../lib/keys.js";
import { Shutdown, type ComponentState } from "../../lib/lifecycle.js";
import { Membership } from "../../lib/membership.js";
import { breakerMetrics, createRegistry, rpcMetricsInterceptor } from "../../lib/metrics.js";
import { Registration } from "../../lib/registration.js";
import { rpcLogInterceptor } from "../../lib/rpc-log.js";
import { tracingInterceptor } from "../../lib/tracing.js";
import { startServer, type ServerLimits } from "../../lib/server.js";
import { ApiKeyStore } from "./api-keys.js";
import { authInterceptor, keyAdmission } from "./auth.js";
import { gatewayFastRoutes, gatewayRoutes } from "./public-services.js";
import { RateLimiter, type RateLimits } from "./rate-limit.js";
import { createCorsHandler, createRestHandler } from "./rest/transcoder.js";
import { createUiHandler } from "./ui.js";
import { meshConnector, Upstreams } from "./upstreams.js";
import type { MeshSecurity } from "../../lib/mesh-security.js";

/** Everything a gateway needs, already parsed (main.ts reads env and flags). */
export interface GatewayOptions {
  host: string;
  port: number;
  etcdEndpoints: string[];
  /** TLS and user of the etcd connections (lib/etcd.ts); plaintext without auth when absent. */
  etcdSecurity?: EtcdSecurity | undefined;
  etcdRoot: string;
  /** The `--redis` setting: `redis://`, `rediss://`, `redis-sentinel://` or `rediss-sentinel://` (lib/redis.ts). */
  redisUrl: string;
  /** TLS files of the Redis connections (lib/redis.ts; `rediss://` and `rediss-sentinel://` URLs). */
  redisTls?: RedisTls | undefined;
  redisPrefix: string;
  /** Admin key of tenant "default", or "" for none. */
  bootstrapApiKey: string;
  rateLimits: RateLimits;
  maxRequestBytes: number;
  /** Origins allowed to call from browsers ("*" for any); empty: no CORS headers. */
  corsOrigins: string[];
  /** Instance labels (gray releases of configuration target them). */
  labels: Record<string, string>;
  /** Last-known-good configuration file; "" for none. */
  configCache: string;
  /** What other services dial (see ServerOptions.advertiseAddress); "" for the bound address. */
  advertiseAddress: string;
  /** Bounds on what one client can hold of the port (lib/server.ts ServerLimits). @default DEFAULT_SERVER_LIMITS */
  limits?: Partial<ServerLimits>;
  /** Mesh credentials to dial schedulers and config services with (mTLS, service token). @default none (loopback only) */
  security?: MeshSecurity;
  /** Certificate and key (PEM) to serve TLS; plaintext without. */
  tls?: { cert: Buffer; key: Buffer };
  version: string;
  logger: Logger;
}

/** A running gateway. */
export interface Gateway {
  readonly address: string;
  readonly state: ComponentState;
  close(): Promise<void>;
}

/** Builds and starts the gateway: the public API behind API keys, forwarding to the mesh. */
export async function startGateway(opts: GatewayOptions): Promise<Gateway> {
  const log = opts.logger;
  let state: ComponentState = "starting";
  const id = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const keys = etcdKeys(opts.etcdRoot);
  const etcd = createEtcd({ endpoints: opts.etcdEndpoints, logger: log, security: opts.etcdSecurity });
  const redis = createRedis(opts.redisUrl, { maxRetriesPerRequest: 2, enableAutoPipelining: true }, opts.redisTls);
  const members = (service: string) =>
    new Membership<ServiceRecord>({ client: etcd, prefix: keys.services(service), parse: parseServiceRecord, logger: log });
  const schedulers = members("scheduler");
  const configs = members("config");
  const apiKeys = new ApiKeyStore({ etcd, prefix: keys.apiKeys, bootstrapKey: opts.bootstrapApiKey, logger: log });
  await Promise.all([schedulers.start(), configs.start(), apiKeys.start()]);
  // Live settings: flags give the defaults, the `gateway` config namespace overrides them.
  const limits = { ...opts.rateLimits };
  let keyLimits = new Map<string, RateLimits>();
  let maxRequestBytes = opts.maxRequestBytes;
  let cors = opts.corsOrigins.length > 0 ? createCorsHandler({ allowedOrigins: opts.corsOrigins }) : undefined;
  const registry = createRegistry("gateway");
  const config = await connectConfig({
    ...(opts.security !== undefined ? { security: opts.security } : {}),
    etcd,
    root: opts.etcdRoot,
    namespaces: ["gateway"],
    labels: opts.labels,
    cacheFile: opts.configCache,
    registry,
    logger: log,
  });
  const applyConfig = (): void => {
    const c = decodeConfig(GatewayConfigSchema, config.client.get("gateway"));
    limits.ratePerSecond = c.rateLimitPerSecond ?? opts.rateLimits.ratePerSecond;
    limits.burst = c.rateLimitBurst ?? opts.rateLimits.burst;
    keyLimits = new Map(
      Object.entries(c.keyRateLimits ?? {}).map(([id, l]) => [id, { ratePerSecond: l.perSecond, burst: l.burst > 0 ? l.burst : limits.burst }]),
    );
    maxRequestBytes = c.maxRequestBytes !== undefined ? Number(c.maxRequestBytes) : opts.maxRequestBytes;
    const origins = c.corsOrigins ?? opts.corsOrigins;
    cors = origins.length > 0 ? createCorsHandler({ allowedOrigins: origins }) : undefined;
    log.info({ limits, keyRateLimits: keyLimits.size, maxRequestBytes, origins }, "configuration applied");
  };
  applyConfig();
  config.client.on("change", applyConfig);
  const limiter = new RateLimiter(redis, opts.redisPrefix, (key) => keyLimits.get(key) ?? limits);

  const upstreams = {
    schedulers: new Upstreams(SchedulerService, "scheduler", schedulers, {}, meshConnector(opts.security, "scheduler")),
    schedules: new Upstreams(ScheduleService, "scheduler", schedulers, {}, meshConnector(opts.security, "scheduler")),
    config: new Upstreams(ConfigService, "config", configs, {}, meshConnector(opts.security, "config")),
  };
  breakerMetrics(registry, () =>
    (["schedulers", "config"] as const).flatMap((u) =>
      [...upstreams[u].breakerStates()].map(([replica, state]) => ({
        upstream: u === "config" ? "config" : "scheduler",
        replica,
        // Open, or half-open (waiting for its trial call to succeed): not taking calls freely.
        open: state !== "closed",
      })),
    ),
  );
  const routes = gatewayRoutes({
    ...upstreams,
    keys: apiKeys,
    logger: log,
  });
  const auth = { keys: apiKeys, limiter, maxRequestBytes: () => maxRequestBytes };
  const interceptors = [authInterceptor(auth)];
  // REST runs through the same implementations and interceptors, in process.
  const rest = createRestHandler({
    services: [TaskService, ScheduleService, ClusterService, ConfigService, ApiKeyService],
    transport: createRouterTransport(routes, {
      router: {
        interceptors: [tracingInterceptor(), rpcMetricsInterceptor(registry, "gateway"), rpcLogInterceptor(log), ...interceptors],
      },
    }),
    maxBodyBytes: () => maxRequestBytes,
    logger: log,
  });
  const ui = createUiHandler({ dir: join(import.meta.dirname, "../../ui/dist"), prefix: "/ui", logger: log });
  const server = await startServer({
    ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
    name: "gateway",
    host: opts.host,
    port: opts.port,
    routes,
    files: [
      file_taskmesh_v1_task_service,
      file_taskmesh_v1_cluster_service,
      file_taskmesh_v1_config_service,
      file_taskmesh_v1_schedule_service,
      file_taskmesh_v1_api_key_service,
    ],
    registry,
    logger: log,
    interceptors,
    // Plain gRPC clients: forwarded as bytes, with the interceptors' checks made by the routes.
    fastUnary: gatewayFastRoutes({ ...upstreams, keys: apiKeys, logger: log }, auth),
    advertiseAddress: opts.advertiseAddress,
    httpFallback: (req, res) => ui(req, res) || rest(req, res),
    ...(opts.tls !== undefined ? { tls: opts.tls } : {}),
    httpPrelude: (req, res) => cors?.(req, res) ?? false,
    admit: keyAdmission(apiKeys),
  });
  const registration = await Registration.create({
    client: etcd,
    key: keys.service("gateway", id),
    value: () => ({ id, address: server.address, host: hostname(), pid: process.pid, version: opts.version, started: new Date().toISOString() }),
    ttlSeconds: 5,
    logger: log,
  });
  state = "running";
  log.info({ address: server.address }, "gateway started");

  const shutdown = new Shutdown(log)
    .add("stop serving", () => {
      state = "draining";
      server.setServing(false);
    })
    .add("close server", () => server.close())
    .add("release registration", () => registration.close())
    .add("close watches", async () => {
      await schedulers.close();
      await configs.close();
      await apiKeys.close();
    })
    .add("close clients", async () => {
      await config.close();
      for (const u of Object.values(upstreams)) u.close();
      redis.disconnect();
      etcd.close();
      state = "stopped";
    });
  return {
    address: server.address,
    get state() {
      return state;
    },
    close: () => shutdown.shutdown(),
  };
}
