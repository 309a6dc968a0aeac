/**
 * taskmesh's shared runtime library: what every service uses. Services import from here (or a
 * module of this folder); this folder never imports a service.
 */
export { AsyncQueue } from "./async-queue.js";
export { unaryClient, type CallOptions, type UnaryClient, type UnaryClientOptions } from "./client.js";
export { GrpcChannel, type GrpcChannelOptions } from "./grpc-channel.js";
export { DevCa, type CertFiles, type LeafSpec } from "./dev-ca.js";
export { createEtcd, etcdSecurityFrom, etcdSecuritySettings, type EtcdSecurity } from "./etcd.js";
export { MESH_ROLES, meshUri, type MeshPeer, type MeshRole } from "./mesh-identity.js";
export { MeshSecurity, meshPeer, meshTransport, SERVICE_TOKEN_HEADER, type AccessPolicy } from "./mesh-security.js";
export { RETRYABLE_CODES, invalidArgument, notFound, toConnectError } from "./errors.js";
export { HealthRegistry, ServingStatus } from "./health.js";
export {
  etcdKeys,
  parseServiceRecord,
  parseWorkerRecord,
  type EtcdKeys,
  type ServiceRecord,
  type WorkerRecord,
} from "./keys.js";
export { Shutdown, delay, type ComponentState } from "./lifecycle.js";
export { createLogger, silentLogger, type Logger } from "./logger.js";
export { Membership, type MembershipOptions } from "./membership.js";
export { METRIC_NAMES, createRegistry, schedulerMetrics, workerMetrics } from "./metrics.js";
export {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  FailoverAwareSentinelConnector,
  ReplicaWaiter,
  createRedis,
  parseRedisUrl,
  redactRedisUrl,
  redisClientOptions,
  redisTlsFrom,
  redisTlsSettings,
  redisUrlSetting,
  type RedisClientOptions,
  type RedisTls,
  type RedisTarget,
  type ReplicaTicket,
  type ReplicaWaiterOptions,
} from "./redis.js";
export { Registration, type RegistrationOptions } from "./registration.js";
export { startServer, type RpcServer, type ServerOptions } from "./server.js";
export { as, commonSettings, readSettings } from "./settings.js";
export { BUILTIN_TASK_TYPES, LIMITS, TENANT_HEADER } from "./task-types.js";
export { VERSION } from "./version.js";
export { rpcLogInterceptor } from "./rpc-log.js";
export {
  ConfigClient,
  connectConfig,
  decodeConfig,
  mergeConfigs,
  workerNamespaces,
  type ConfigClientOptions,
  type ServiceConfig,
} from "./config-client.js";
export { currentTraceparent, initTracing, traceMixin, tracingInterceptor, withSpan } from "./tracing.js";
