import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { resolve } from "node:path";
import { createLogger } from "../../lib/logger.js";
import { as, commonSettings, limitsFrom, readSettings } from "../../lib/settings.js";
import { VERSION } from "../../lib/version.js";
import { etcdSecurityFrom, etcdSecuritySettings } from "../../lib/etcd.js";
import { MeshSecurity } from "../../lib/mesh-security.js";
import { startWorker } from "./worker.js";
import { initTracing, traceMixin } from "../../lib/tracing.js";

const settings = readSettings("taskmesh-worker", {
  ...commonSettings,
  ...etcdSecuritySettings,
  id: {
    env: "TASKMESH_WORKER_ID",
    default: `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`,
    parse: as.string,
    help: "worker id (unique in the mesh)",
  },
  host: { env: "TASKMESH_WORKER_HOST", default: "127.0.0.1", parse: as.string, help: "address to bind" },
  port: { env: "TASKMESH_WORKER_PORT", default: 8090, parse: as.port, help: "port to bind (0 = any free port)" },
  slots: { env: "TASKMESH_WORKER_SLOTS", default: 10, parse: as.int, help: "tasks run at once" },
  handlers: { env: "TASKMESH_WORKER_HANDLERS", default: "", parse: as.string, help: "module of user-defined task handlers" },
  "files-root": {
    env: "TASKMESH_WORKER_FILES_ROOT",
    default: resolve(".taskmesh/files"),
    parse: (s) => resolve(s),
    help: "root folder of file_operation tasks",
  },
  "http-allowed-hosts": {
    env: "TASKMESH_WORKER_HTTP_ALLOWED_HOSTS",
    default: [] as string[],
    parse: as.list,
    help: "private/loopback hosts http_request may reach anyway",
  },
  queues: { env: "TASKMESH_WORKER_QUEUES", default: [] as string[], parse: as.list, help: "queues served (empty = all)" },
  "shutdown-grace-ms": {
    env: "TASKMESH_WORKER_SHUTDOWN_GRACE_MS",
    default: 10_000,
    parse: as.int,
    help: "how long in-flight tasks may finish after SIGTERM",
  },
  "lease-ttl": { env: "TASKMESH_WORKER_LEASE_TTL", default: 5, parse: as.int, help: "etcd lease TTL in seconds" },
  "heartbeat-ms": { env: "TASKMESH_WORKER_HEARTBEAT_MS", default: 1000, parse: as.int, help: "heartbeat period" },
});

const logger = createLogger("worker", { level: settings["log-level"], mixin: traceMixin });
try {
  const stopTracing = initTracing("taskmesh-worker", { otlpEndpoint: settings["otlp-endpoint"], always: settings.tracing, version: VERSION, logger });
  const security = MeshSecurity.fromSettings(settings, { role: "worker", logger });
  const worker = await startWorker({
    security,
    etcdSecurity: etcdSecurityFrom(settings),
    limits: limitsFrom(settings),
    id: settings.id,
    host: settings.host,
    port: settings.port,
    slots: settings.slots,
    etcdEndpoints: settings.etcd,
    etcdRoot: settings["etcd-root"],
    handlersPath: settings.handlers === "" ? "" : resolve(settings.handlers),
    filesRoot: settings["files-root"],
    httpAllowedHosts: settings["http-allowed-hosts"],
    queues: settings.queues,
    labels: settings.labels,
    advertiseAddress: settings["advertise-address"],
    configCache: settings["config-cache"] || resolve(".taskmesh/cache", `worker-${settings.id}.json`),
    shutdownGraceMs: settings["shutdown-grace-ms"],
    leaseTtlSeconds: settings["lease-ttl"],
    heartbeatMs: settings["heartbeat-ms"],
    version: VERSION,
    logger,
  });
  const shutdownLimit = settings["shutdown-grace-ms"] + 10_000;
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info({ signal }, "shutting down");
    setTimeout(() => process.exit(1), shutdownLimit).unref();
    void worker
      .close()
      .then(stopTracing)
      .then(() => process.exit(0));
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
} catch (err) {
  logger.fatal({ err }, "worker failed to start");
  process.exit(1);
}
