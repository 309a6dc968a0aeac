import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { createLogger } from "../../lib/logger.js";
import { Shutdown } from "../../lib/lifecycle.js";
import { as, commonSettings, limitsFrom, readSettings } from "../../lib/settings.js";
import { REDIS_URL_HELP, redisTlsFrom, redisTlsSettings, redisUrlSetting } from "../../lib/redis.js";
import { VERSION } from "../../lib/version.js";
import { etcdSecurityFrom, etcdSecuritySettings } from "../../lib/etcd.js";
import { MeshSecurity } from "../../lib/mesh-security.js";
import { startGateway } from "./gateway.js";
import { initTracing, traceMixin } from "../../lib/tracing.js";

const settings = readSettings("taskmesh-gateway", {
  ...commonSettings,
  ...etcdSecuritySettings,
  ...redisTlsSettings,
  host: { env: "TASKMESH_GATEWAY_HOST", default: "127.0.0.1", parse: as.string, help: "address to bind" },
  port: { env: "TASKMESH_GATEWAY_PORT", default: 8080, parse: as.port, help: "port to bind (0 = any free port)" },
  redis: {
    env: "TASKMESH_REDIS",
    default: "redis://127.0.0.1:6379",
    parse: redisUrlSetting,
    help: `${REDIS_URL_HELP}; the gateway keeps its rate limits there`,
  },
  "redis-prefix": { env: "TASKMESH_REDIS_PREFIX", default: "tm", parse: as.string, help: "prefix of every Redis key" },
  "bootstrap-api-key": {
    env: "TASKMESH_BOOTSTRAP_API_KEY",
    default: "",
    parse: as.string,
    help: "admin API key of tenant \"default\" (create the others with ApiKeyService)",
  },
  "rate-limit": { env: "TASKMESH_RATE_LIMIT", default: 0, parse: Number, help: "requests per second per API key (0 = unlimited)" },
  "rate-burst": { env: "TASKMESH_RATE_BURST", default: 100, parse: as.int, help: "token bucket size per API key" },
  "max-request-bytes": {
    env: "TASKMESH_MAX_REQUEST_BYTES",
    default: 8 * 1024 * 1024,
    parse: as.int,
    help: "largest request body accepted",
  },
  "tls-cert": { env: "TASKMESH_TLS_CERT", default: "", parse: as.string, help: "PEM certificate file: serve TLS (h2 and http/1.1 by ALPN)" },
  "tls-key": { env: "TASKMESH_TLS_KEY", default: "", parse: as.string, help: "PEM private key file of --tls-cert" },
  "cors-origins": {
    env: "TASKMESH_CORS_ORIGINS",
    default: [] as string[],
    parse: as.list,
    help: "origins allowed to call from browsers, comma-separated (* for any)",
  },
});

const logger = createLogger("gateway", { level: settings["log-level"], mixin: traceMixin });
try {
  const stopTracing = initTracing("taskmesh-gateway", { otlpEndpoint: settings["otlp-endpoint"], always: settings.tracing, version: VERSION, logger });
  if ((settings["tls-cert"] === "") !== (settings["tls-key"] === "")) throw new Error("--tls-cert and --tls-key go together");
  const tls =
    settings["tls-cert"] === ""
      ? undefined
      : { cert: readFileSync(settings["tls-cert"]), key: readFileSync(settings["tls-key"]) };
  const security = MeshSecurity.fromSettings(settings, { role: "gateway", logger });
  const gateway = await startGateway({
    security,
    etcdSecurity: etcdSecurityFrom(settings),
    limits: limitsFrom(settings),
    redisTls: redisTlsFrom(settings),
    host: settings.host,
    port: settings.port,
    etcdEndpoints: settings.etcd,
    etcdRoot: settings["etcd-root"],
    redisUrl: settings.redis,
    redisPrefix: settings["redis-prefix"],
    bootstrapApiKey: settings["bootstrap-api-key"],
    rateLimits: { ratePerSecond: settings["rate-limit"], burst: settings["rate-burst"] },
    maxRequestBytes: settings["max-request-bytes"],
    corsOrigins: settings["cors-origins"],
    labels: settings.labels,
    advertiseAddress: settings["advertise-address"],
    configCache: settings["config-cache"] || resolve(".taskmesh/cache/gateway.json"),
    ...(tls !== undefined ? { tls } : {}),
    version: VERSION,
    logger,
  });
  new Shutdown(logger).add("gateway", () => gateway.close()).add("tracing", stopTracing).onSignals(15_000);
} catch (err) {
  logger.fatal({ err }, "gateway failed to start");
  process.exit(1);
}
