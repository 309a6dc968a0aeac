import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { Etcd3 } from "etcd3";
import { file_taskmesh_v1_cluster_service } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService, file_taskmesh_v1_config_service } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService, file_taskmesh_v1_schedule_service } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { file_taskmesh_v1_task_service } from "../../gen/taskmesh/v1/task_service_pb.js";
import { etcdKeys, parseServiceRecord, type ServiceRecord } from "../../lib/keys.js";
import { Shutdown } from "../../lib/lifecycle.js";
import { createLogger } from "../../lib/logger.js";
import { Membership } from "../../lib/membership.js";
import { createRegistry } from "../../lib/metrics.js";
import { Registration } from "../../lib/registration.js";
import { startServer } from "../../lib/server.js";
import { as, commonSettings, readSettings } from "../../lib/settings.js";
import { VERSION } from "../../lib/version.js";
import { bootstrapAuth } from "./auth.js";
import { gatewayRoutes } from "./task-service.js";
import { Upstreams } from "./upstreams.js";

const settings = readSettings("taskmesh-gateway", {
  ...commonSettings,
  host: { env: "TASKMESH_GATEWAY_HOST", default: "127.0.0.1", parse: as.string, help: "address to bind (loopback until auth lands)" },
  port: { env: "TASKMESH_GATEWAY_PORT", default: 8080, parse: as.port, help: "port to bind (0 = any free port)" },
  "bootstrap-api-key": {
    env: "TASKMESH_BOOTSTRAP_API_KEY",
    default: "",
    parse: as.string,
    help: "admin API key accepted by the gateway (empty: no key required, loopback only)",
  },
});

const logger = createLogger("gateway", { level: settings["log-level"] });
try {
  const key = settings["bootstrap-api-key"];
  if (key === "" && settings.host !== "127.0.0.1" && settings.host !== "::1" && settings.host !== "localhost") {
    throw new Error("without TASKMESH_BOOTSTRAP_API_KEY the gateway binds to loopback only");
  }
  const id = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const keys = etcdKeys(settings["etcd-root"]);
  const etcd = new Etcd3({ hosts: settings.etcd });
  const members = (service: string) =>
    new Membership<ServiceRecord>({ client: etcd, prefix: keys.services(service), parse: parseServiceRecord, logger });
  const schedulers = members("scheduler");
  const configs = members("config");
  await Promise.all([schedulers.start(), configs.start()]);
  const server = await startServer({
    name: "gateway",
    host: settings.host,
    port: settings.port,
    routes: gatewayRoutes({
      schedulers: new Upstreams(SchedulerService, "scheduler", schedulers),
      schedules: new Upstreams(ScheduleService, "scheduler", schedulers),
      config: new Upstreams(ConfigService, "config", configs),
      logger,
    }),
    files: [file_taskmesh_v1_task_service, file_taskmesh_v1_cluster_service, file_taskmesh_v1_config_service, file_taskmesh_v1_schedule_service],
    registry: createRegistry("gateway"),
    logger,
    interceptors: [bootstrapAuth(key)],
  });
  const registration = await Registration.create({
    client: etcd,
    key: keys.service("gateway", id),
    value: () => ({ id, address: server.address, host: hostname(), pid: process.pid, version: VERSION, started: new Date().toISOString() }),
    ttlSeconds: 5,
    logger,
  });
  new Shutdown(logger)
    .add("stop serving", () => server.setServing(false))
    .add("close server", () => server.close())
    .add("release registration", () => registration.close())
    .add("close watches", async () => {
      await schedulers.close();
      await configs.close();
    })
    .add("close etcd", () => etcd.close())
    .onSignals(10_000);
} catch (err) {
  logger.fatal({ err }, "gateway failed to start");
  process.exit(1);
}
