import { resolve } from "node:path";
import { createLogger } from "../../lib/logger.js";
import { Shutdown } from "../../lib/lifecycle.js";
import { as, commonSettings, limitsFrom, readSettings } from "../../lib/settings.js";
import { REDIS_URL_HELP, redisTlsFrom, redisTlsSettings, redisUrlSetting } from "../../lib/redis.js";
import { VERSION } from "../../lib/version.js";
import { etcdSecurityFrom, etcdSecuritySettings } from "../../lib/etcd.js";
import { MeshSecurity } from "../../lib/mesh-security.js";
import { startScheduler } from "./scheduler.js";
import { initTracing, traceMixin } from "../../lib/tracing.js";

const settings = readSettings("taskmesh-scheduler", {
  ...commonSettings,
  ...etcdSecuritySettings,
  ...redisTlsSettings,
  id: { env: "TASKMESH_SCHEDULER_ID", default: "", parse: as.string, help: "replica id (default: host-pid-random)" },
  host: { env: "TASKMESH_SCHEDULER_HOST", default: "127.0.0.1", parse: as.string, help: "address to bind" },
  port: { env: "TASKMESH_SCHEDULER_PORT", default: 8081, parse: as.port, help: "port to bind (0 = any free port)" },
  redis: {
    env: "TASKMESH_REDIS",
    default: "redis://127.0.0.1:6379",
    parse: redisUrlSetting,
    help: REDIS_URL_HELP,
  },
  "redis-wait-replicas": {
    env: "TASKMESH_REDIS_WAIT_REPLICAS",
    default: 0,
    parse: (raw: string): number => {
      const n = as.int(raw);
      if (n < 0) throw new Error(`expected 0 or more replicas, got ${n}`);
      return n;
    },
    help: "replicas that must acknowledge a submit (Redis WAIT) before it returns; 0 = asynchronous replication only",
  },
  "redis-wait-timeout-ms": {
    env: "TASKMESH_REDIS_WAIT_TIMEOUT_MS",
    default: 1000,
    parse: (raw: string): number => {
      const n = as.int(raw);
      if (n < 1 || n > 60_000) throw new Error(`expected 1 to 60000 ms, got ${n}`);
      return n;
    },
    help: "how long a submit waits for --redis-wait-replicas before failing UNAVAILABLE",
  },
  "redis-prefix": { env: "TASKMESH_REDIS_PREFIX", default: "tm", parse: as.string, help: "prefix of every Redis key" },
  "task-lease-ms": { env: "TASKMESH_TASK_LEASE_MS", default: 10_000, parse: as.int, help: "lease of a running attempt without heartbeats" },
  "aging-ms": { env: "TASKMESH_AGING_MS", default: 5000, parse: as.int, help: "waiting time worth one priority level" },
  "election-ttl": { env: "TASKMESH_ELECTION_TTL", default: 3, parse: as.int, help: "leader lease TTL in seconds" },
});

const logger = createLogger("scheduler", { level: settings["log-level"], mixin: traceMixin });
try {
  const stopTracing = initTracing("taskmesh-scheduler", { otlpEndpoint: settings["otlp-endpoint"], always: settings.tracing, version: VERSION, logger });
  const security = MeshSecurity.fromSettings(settings, { role: "scheduler", logger });
  const scheduler = await startScheduler({
    security,
    etcdSecurity: etcdSecurityFrom(settings),
    limits: limitsFrom(settings),
    redisTls: redisTlsFrom(settings),
    ...(settings.id !== "" ? { id: settings.id } : {}),
    host: settings.host,
    port: settings.port,
    etcdEndpoints: settings.etcd,
    etcdRoot: settings["etcd-root"],
    redisUrl: settings.redis,
    redisPrefix: settings["redis-prefix"],
    redisWaitReplicas: settings["redis-wait-replicas"],
    redisWaitTimeoutMs: settings["redis-wait-timeout-ms"],
    taskLeaseMs: settings["task-lease-ms"],
    agingMsPerLevel: settings["aging-ms"],
    electionTtlSeconds: settings["election-ttl"],
    labels: settings.labels,
    advertiseAddress: settings["advertise-address"],
    configCache: settings["config-cache"] || resolve(".taskmesh/cache/scheduler.json"),
    version: VERSION,
    logger,
  });
  new Shutdown(logger).add("scheduler", () => scheduler.close()).add("tracing", stopTracing).onSignals(15_000);
} catch (err) {
  logger.fatal({ err }, "scheduler failed to start");
  process.exit(1);
}
