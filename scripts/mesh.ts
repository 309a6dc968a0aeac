/**
 * The local mesh behind `npm start`: etcd and Redis with data under .taskmesh/, then config,
 * scheduler, two workers and the gateway as child processes; waits until all are healthy, prints
 * how to call the gateway, keeps every child running (scripts/supervisor.ts: a service that dies
 * is restarted on the same port, with backoff) and on Ctrl-C or SIGTERM stops everything in
 * reverse order.
 *
 * Environment, besides what the services read:
 * - `TASKMESH_DATA_DIR`: where etcd, Redis, files, caches, logs, the dev API key and the
 *   supervisor's status file (`supervisor.json`) live (default `.taskmesh` in the repository).
 * - `TASKMESH_MESH_PORTS`: `preferred` (default) uses 2379, 6379, 8080… when free and any free
 *   port otherwise; `any` takes any free port for everything (tests, several meshes at once).
 * - `TASKMESH_PROMETHEUS_TARGETS`: the Prometheus targets file to write (default
 *   `deploy/prometheus/targets/local.json`), or `off`. With mTLS, the observer certificate
 *   Prometheus scrapes with goes to `tls/` beside the targets file's folder.
 * - `TASKMESH_MESH_TLS`: `on` (default) makes a development CA under `<data>/tls` and gives
 *   every service its certificate: the services talk mTLS (docs/security.md); `off` runs them in
 *   plaintext on loopback.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { join, resolve } from "node:path";
import { DevCa } from "../lib/dev-ca.js";
import { probeHealthz } from "../lib/health.js";
import type { MeshRole } from "../lib/mesh-identity.js";
import { SERVICE_NODE_FLAGS } from "../lib/node-flags.js";
import { copyObserverCertificate, LOCAL_TARGETS_FILE, prometheusTlsDir, removePrometheusTargets, writePrometheusTargets } from "./prometheus-targets.js";
import { Supervisor, describeExit, shownPath, type SupervisedService } from "./supervisor.js";

const root = resolve(import.meta.dirname, "..");
const out = (s: string): void => void process.stdout.write(`${s}\n`);
const setting = (name: string): string | undefined => {
  const v = process.env[name];
  return v === undefined || v === "" ? undefined : v;
};

const data = resolve(setting("TASKMESH_DATA_DIR") ?? join(root, ".taskmesh"));
const logs = join(data, "logs");
const portMode = setting("TASKMESH_MESH_PORTS") ?? "preferred";
if (portMode !== "preferred" && portMode !== "any") {
  out(`TASKMESH_MESH_PORTS must be "preferred" or "any", not ${JSON.stringify(portMode)}`);
  process.exit(2);
}
const tlsMode = setting("TASKMESH_MESH_TLS") ?? "on";
if (tlsMode !== "on" && tlsMode !== "off") {
  out(`TASKMESH_MESH_TLS must be "on" or "off", not ${JSON.stringify(tlsMode)}`);
  process.exit(2);
}
const targetsSetting = setting("TASKMESH_PROMETHEUS_TARGETS");
const targetsFile = targetsSetting === "off" ? undefined : resolve(targetsSetting ?? LOCAL_TARGETS_FILE);
mkdirSync(logs, { recursive: true });

// Children get their own process groups: a terminal's Ctrl-C reaches only this process, which
// then stops them in reverse order, each signalled once (a service treats a second signal as
// "exit now", so signalling it from the terminal and from here would skip its graceful stop).
const supervisor = new Supervisor({ statusFile: join(data, "supervisor.json"), detached: true, out });
// Last resort if this process exits another way than stopAll (an uncaught exception).
process.on("exit", () => supervisor.terminateAllNow());
let stopping = false;
/** Ports handed out by this launcher, so two services never get the same free port. */
const picked = new Set<number>();

function portFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createServer();
    s.once("error", () => res(false));
    s.listen(port, "127.0.0.1", () => s.close(() => res(true)));
  });
}

function anyFreePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a !== null ? res(a.port) : rej(new Error("no port"))));
    });
  });
}

async function pickPort(preferred: number): Promise<number> {
  let port = portMode === "preferred" && !picked.has(preferred) && (await portFree(preferred)) ? preferred : await anyFreePort();
  for (let i = 0; picked.has(port) && i < 100; i++) port = await anyFreePort();
  picked.add(port);
  return port;
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createConnection({ port, host: "127.0.0.1" });
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

/**
 * Waits until `check` passes, then marks `svc` ready (supervised from then on). Fails fast when
 * the service exits first, and after `timeoutMs` when it never gets ready.
 */
async function until(svc: SupervisedService, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (stopping) throw new Error("stopped");
    const f = svc.failure;
    if (f !== undefined) {
      throw new Error(`${svc.name} exited (${describeExit(f)}) before it became ready; see ${shownPath(join(logs, `${svc.name}.log`))}`);
    }
    if (Date.now() > deadline) throw new Error(`${svc.name} did not become ready in ${timeoutMs / 1000}s (see ${shownPath(logs)}/)`);
    await new Promise((r) => setTimeout(r, 100));
  }
  svc.markReady();
}

function start(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, port: number): SupervisedService {
  return supervisor.start({
    name,
    command: cmd,
    args,
    env: { ...process.env, ...env },
    cwd: root,
    logFile: join(logs, `${name}.log`),
    port,
  });
}

/** True when `/healthz` on the port answers 200 (over TLS trusting `ca` for an internal port). */
async function healthy(port: number, ca?: Buffer): Promise<boolean> {
  return (await probeHealthz("127.0.0.1", port, ca === undefined ? {} : { ca })) === 200;
}

async function stopAll(code: number): Promise<never> {
  if (stopping) return new Promise<never>(() => undefined);
  stopping = true;
  if (targetsFile !== undefined) await removePrometheusTargets(targetsFile).catch(() => undefined);
  out("stopping the mesh...");
  await supervisor.stop();
  out("stopped.");
  process.exit(code);
}

process.on("SIGINT", () => void stopAll(0));
process.on("SIGTERM", () => void stopAll(0));
// The children do not see a closed terminal's SIGHUP (own process groups): stop them from here.
process.on("SIGHUP", () => void stopAll(0));

// `node --import tsx` keeps each service one process (the tsx CLI adds a wrapper process).
const service = (name: string, port: number, env: NodeJS.ProcessEnv, main = name): SupervisedService =>
  start(name, process.execPath, [...SERVICE_NODE_FLAGS, "--import", "tsx", join(root, "services", main, "main.ts")], env, port);

try {
  const external = {
    etcd: process.env.TASKMESH_ETCD,
    redis: process.env.TASKMESH_REDIS,
  };
  let etcdEndpoint = external.etcd ?? "";
  let redisUrl = external.redis ?? "";
  if (etcdEndpoint === "") {
    const port = await pickPort(2379);
    const peer = await pickPort(2380);
    const etcd = start("etcd", "etcd", [
      "--name", "taskmesh",
      "--data-dir", join(data, "etcd"),
      "--listen-client-urls", `http://127.0.0.1:${port}`,
      "--advertise-client-urls", `http://127.0.0.1:${port}`,
      "--listen-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-cluster", `taskmesh=http://127.0.0.1:${peer}`,
      "--log-level", "warn",
    ], {}, port);
    etcdEndpoint = `127.0.0.1:${port}`;
    await until(etcd, () => portOpen(port));
  }
  if (redisUrl === "") {
    const port = await pickPort(6379);
    mkdirSync(join(data, "redis"), { recursive: true });
    const redis = start("redis", "redis-server", [
      "--port", String(port), "--bind", "127.0.0.1", "--dir", join(data, "redis"),
      "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
    ], {}, port);
    redisUrl = `redis://127.0.0.1:${port}`;
    await until(redis, () => portOpen(port));
  }

  const keyFile = join(data, "dev-api-key");
  const apiKey =
    process.env.TASKMESH_BOOTSTRAP_API_KEY ??
    (existsSync(keyFile) ? readFileSync(keyFile, "utf8").trim() : `tm_dev_${randomBytes(16).toString("hex")}`);
  writeFileSync(keyFile, apiKey, { mode: 0o600 });

  // mTLS inside the mesh: a development CA under the data directory, a certificate per service.
  const ca = tlsMode === "on" ? await DevCa.open(join(data, "tls")) : undefined;
  const caPem = ca === undefined ? undefined : readFileSync(ca.caCert);
  const identity = async (role: MeshRole, name: string): Promise<NodeJS.ProcessEnv> => {
    if (ca === undefined) return {};
    const files = await ca.issue({ role, name, hosts: ["127.0.0.1", "localhost"] });
    return { TASKMESH_MESH_CA: ca.caCert, TASKMESH_MESH_CERT: files.cert, TASKMESH_MESH_KEY: files.key };
  };
  const common = { TASKMESH_ETCD: etcdEndpoint, TASKMESH_REDIS: redisUrl };
  // The services' own default cache files, but under the data directory.
  const cache = (file: string): { TASKMESH_CONFIG_CACHE: string } => ({ TASKMESH_CONFIG_CACHE: join(data, "cache", file) });
  const ports = {
    gateway: await pickPort(8080),
    scheduler: await pickPort(8081),
    config: await pickPort(8082),
    worker1: await pickPort(8090),
    worker2: await pickPort(8091),
  };
  const config = service("config", ports.config, { ...common, ...(await identity("config", "config")), TASKMESH_CONFIG_PORT: String(ports.config) });
  const scheduler = service("scheduler", ports.scheduler, {
    ...common,
    ...(await identity("scheduler", "scheduler-1")),
    ...cache("scheduler.json"),
    TASKMESH_SCHEDULER_PORT: String(ports.scheduler),
  });
  await until(config, () => healthy(ports.config, caPem));
  await until(scheduler, () => healthy(ports.scheduler, caPem));
  const files = join(data, "files");
  mkdirSync(files, { recursive: true });
  const workerIdentities = [await identity("worker", "worker-1"), await identity("worker", "worker-2")];
  const workers = [ports.worker1, ports.worker2].map((port, i) =>
    service(`worker-${i + 1}`, port, {
      ...common,
      ...workerIdentities[i],
      ...cache(`worker-worker-${i + 1}.json`),
      TASKMESH_WORKER_ID: `worker-${i + 1}`,
      TASKMESH_WORKER_PORT: String(port),
      TASKMESH_WORKER_FILES_ROOT: files,
    }, "worker"),
  );
  const gateway = service("gateway", ports.gateway, {
    ...common,
    ...(await identity("gateway", "gateway")),
    ...cache("gateway.json"),
    TASKMESH_GATEWAY_PORT: String(ports.gateway),
    TASKMESH_BOOTSTRAP_API_KEY: apiKey,
  });
  for (const [i, w] of workers.entries()) await until(w, () => healthy(i === 0 ? ports.worker1 : ports.worker2, caPem));
  await until(gateway, () => healthy(ports.gateway));

  // A Prometheus started with deploy/prometheus/prometheus.yml finds this mesh through this file,
  // and scrapes the internal ports with an observer certificate from tls/ next to it.
  if (targetsFile !== undefined) {
    const mtls = ca !== undefined ? ({ transport: "mtls" } as const) : {};
    if (ca !== undefined) await copyObserverCertificate(ca, prometheusTlsDir(targetsFile));
    await writePrometheusTargets(
      targetsFile,
      [
        { component: "config", address: `127.0.0.1:${ports.config}`, ...mtls },
        { component: "scheduler", address: `127.0.0.1:${ports.scheduler}`, ...mtls },
        { component: "worker", address: `127.0.0.1:${ports.worker1}`, ...mtls },
        { component: "worker", address: `127.0.0.1:${ports.worker2}`, ...mtls },
        { component: "gateway", address: `127.0.0.1:${ports.gateway}` },
      ],
      { mesh: "local" },
    );
  }
  const gw = `127.0.0.1:${ports.gateway}`;
  out("");
  out(`taskmesh is up. Logs in ${shownPath(logs)}/. Ctrl-C stops everything.`);
  out(`  gateway     http://${gw}   (gRPC, Connect, gRPC-Web, REST; metrics at /metrics)`);
  out(`  dashboard   http://${gw}/ui   (sign in with the API key below)`);
  out(`  scheduler   127.0.0.1:${ports.scheduler}   config 127.0.0.1:${ports.config}   workers 127.0.0.1:${ports.worker1}, 127.0.0.1:${ports.worker2}`);
  out(`  etcd        ${etcdEndpoint}   redis ${redisUrl}`);
  out(`  API key     ${apiKey}`);
  out("");
  out("Submit a task:");
  out(`  npx buf curl --protocol grpc --http2-prior-knowledge -H "Authorization: Bearer ${apiKey}" \\`);
  out(`    -d '{"type":"data_processing","payload":{"data":[{"x":1},{"x":2}]}}' \\`);
  out(`    http://${gw}/taskmesh.v1.TaskService/SubmitTask`);
  out("or with curl (Connect JSON):");
  out(`  curl -sS -H "Authorization: Bearer ${apiKey}" -H 'Content-Type: application/json' \\`);
  out(`    -d '{"type":"noop"}' http://${gw}/taskmesh.v1.TaskService/SubmitTask`);
} catch (err) {
  out(`failed to start the mesh: ${(err as Error).message}`);
  await stopAll(1);
}
