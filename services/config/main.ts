import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { warnIfUnreachable } from "../../lib/advertise.js";
import { createEtcd, etcdSecurityFrom, etcdSecuritySettings } from "../../lib/etcd.js";
import { file_taskmesh_v1_config_service } from "../../gen/taskmesh/v1/config_service_pb.js";
import { etcdKeys } from "../../lib/keys.js";
import { Shutdown } from "../../lib/lifecycle.js";
import { createLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { Registration } from "../../lib/registration.js";
import { startServer } from "../../lib/server.js";
import { as, commonSettings, limitsFrom, readSettings } from "../../lib/settings.js";
import { VERSION } from "../../lib/version.js";
import { MeshSecurity } from "../../lib/mesh-security.js";
import { CONFIG_ACCESS, configRoutes } from "./config-service.js";
import { initTracing, traceMixin } from "../../lib/tracing.js";

const settings = readSettings("taskmesh-config", {
  ...commonSettings,
  ...etcdSecuritySettings,
  host: { env: "TASKMESH_CONFIG_HOST", default: "127.0.0.1", parse: as.string, help: "address to bind" },
  port: { env: "TASKMESH_CONFIG_PORT", default: 8082, parse: as.port, help: "port to bind (0 = any free port)" },
});

const logger = createLogger("config", { level: settings["log-level"], mixin: traceMixin });
try {
  const stopTracing = initTracing("taskmesh-config", { otlpEndpoint: settings["otlp-endpoint"], always: settings.tracing, version: VERSION, logger });
  const id = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const keys = etcdKeys(settings["etcd-root"]);
  const etcd = createEtcd({ endpoints: settings.etcd, logger, security: etcdSecurityFrom(settings) });
  const registry = createRegistry("config");
  const security = MeshSecurity.fromSettings(settings, { role: "config", logger });
  const server = await startServer({
    name: "config",
    host: settings.host,
    port: settings.port,
    routes: configRoutes(etcd, keys.root, logger, registry),
    files: [file_taskmesh_v1_config_service],
    advertiseAddress: settings["advertise-address"],
    mesh: { security, access: CONFIG_ACCESS },
    limits: limitsFrom(settings),
    registry,
    logger,
  });
  const registration = await Registration.create({
    client: etcd,
    key: keys.service("config", id),
    value: () => ({ id, address: server.address, host: hostname(), pid: process.pid, version: VERSION, started: new Date().toISOString() }),
    ttlSeconds: 5,
    logger,
  });
  warnIfUnreachable("config", server.address, settings.etcd, logger);
  new Shutdown(logger)
    .add("stop serving", () => server.setServing(false))
    .add("release registration", () => registration.close())
    .add("close server", () => server.close())
    .add("close etcd", () => etcd.close())
    .add("tracing", stopTracing)
    .onSignals(10_000);
} catch (err) {
  logger.fatal({ err }, "config failed to start");
  process.exit(1);
}
