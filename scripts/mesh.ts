/**
 * The local mesh behind `npm start`: etcd and Redis with data under .taskmesh/, then config,
 * scheduler, two workers and the gateway as child processes; waits until all are healthy, prints
 * how to call the gateway, and on Ctrl-C stops everything in reverse order.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { join, resolve } from "node:path";
import { SERVICE_NODE_FLAGS } from "../lib/node-flags.js";
import { LOCAL_TARGETS_FILE, removePrometheusTargets, writePrometheusTargets } from "./prometheus-targets.js";

const root = resolve(import.meta.dirname, "..");
const data = join(root, ".taskmesh");
const logs = join(data, "logs");
mkdirSync(logs, { recursive: true });
const out = (s: string): void => void process.stdout.write(`${s}\n`);

interface Proc {
  name: string;
  child: ChildProcess;
  exited: Promise<number | null>;
}
const procs: Proc[] = [];
let stopping = false;

function portFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createServer();
    s.once("error", () => res(false));
    s.listen(port, "127.0.0.1", () => s.close(() => res(true)));
  });
}

async function pickPort(preferred: number): Promise<number> {
  if (await portFree(preferred)) return preferred;
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a !== null ? res(a.port) : rej(new Error("no port"))));
    });
  });
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

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (stopping) throw new Error("stopped");
    if (Date.now() > deadline) throw new Error(`${what} did not become ready in ${timeoutMs / 1000}s (see .taskmesh/logs/)`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function start(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const log = createWriteStream(join(logs, `${name}.log`), { flags: "a" });
  const child = spawn(cmd, args, { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout?.pipe(log);
  child.stderr?.pipe(log);
  const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  const p: Proc = { name, child, exited };
  procs.push(p);
  void exited.then((code) => {
    if (!stopping) {
      out(`${name} exited unexpectedly (code ${code}); see .taskmesh/logs/${name}.log. Stopping the mesh.`);
      void stopAll(1);
    }
  });
  return p;
}

async function healthy(port: number): Promise<boolean> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/healthz`);
    return r.status === 200;
  } catch {
    return false;
  }
}

async function stopAll(code: number): Promise<never> {
  if (stopping) return new Promise<never>(() => undefined);
  stopping = true;
  await removePrometheusTargets(LOCAL_TARGETS_FILE).catch(() => undefined);
  out("stopping the mesh...");
  for (const p of [...procs].reverse()) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) continue;
    p.child.kill("SIGTERM");
    const killed = setTimeout(() => p.child.kill("SIGKILL"), 15_000);
    await p.exited;
    clearTimeout(killed);
  }
  out("stopped.");
  process.exit(code);
}

process.on("SIGINT", () => void stopAll(0));
process.on("SIGTERM", () => void stopAll(0));

// `node --import tsx` keeps each service one process (the tsx CLI adds a wrapper process).
const service = (name: string, env: NodeJS.ProcessEnv, main = name): Proc =>
  start(name, process.execPath, [...SERVICE_NODE_FLAGS, "--import", "tsx", join(root, "services", main, "main.ts")], env);

try {
  const external = {
    etcd: process.env.TASKMESH_ETCD,
    redis: process.env.TASKMESH_REDIS,
  };
  let etcdEndpoint = external.etcd ?? "";
  let redisUrl = external.redis ?? "";
  if (etcdEndpoint === "") {
    const port = await pickPort(2379);
    const peer = await pickPort(2380 === port ? 2381 : 2380);
    start("etcd", "etcd", [
      "--name", "taskmesh",
      "--data-dir", join(data, "etcd"),
      "--listen-client-urls", `http://127.0.0.1:${port}`,
      "--advertise-client-urls", `http://127.0.0.1:${port}`,
      "--listen-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-cluster", `taskmesh=http://127.0.0.1:${peer}`,
      "--log-level", "warn",
    ]);
    etcdEndpoint = `127.0.0.1:${port}`;
    await until("etcd", () => portOpen(port));
  }
  if (redisUrl === "") {
    const port = await pickPort(6379);
    mkdirSync(join(data, "redis"), { recursive: true });
    start("redis", "redis-server", [
      "--port", String(port), "--bind", "127.0.0.1", "--dir", join(data, "redis"),
      "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
    ]);
    redisUrl = `redis://127.0.0.1:${port}`;
    await until("redis", () => portOpen(port));
  }

  const keyFile = join(data, "dev-api-key");
  const apiKey =
    process.env.TASKMESH_BOOTSTRAP_API_KEY ??
    (existsSync(keyFile) ? readFileSync(keyFile, "utf8").trim() : `tm_dev_${randomBytes(16).toString("hex")}`);
  writeFileSync(keyFile, apiKey, { mode: 0o600 });

  const common = { TASKMESH_ETCD: etcdEndpoint, TASKMESH_REDIS: redisUrl };
  const ports = {
    gateway: await pickPort(8080),
    scheduler: await pickPort(8081),
    config: await pickPort(8082),
    worker1: await pickPort(8090),
    worker2: await pickPort(8091),
  };
  service("config", { ...common, TASKMESH_CONFIG_PORT: String(ports.config) });
  service("scheduler", { ...common, TASKMESH_SCHEDULER_PORT: String(ports.scheduler) });
  await until("config", () => healthy(ports.config));
  await until("scheduler", () => healthy(ports.scheduler));
  const files = join(data, "files");
  mkdirSync(files, { recursive: true });
  for (const [i, port] of [ports.worker1, ports.worker2].entries()) {
    service(`worker-${i + 1}`, {
      ...common,
      TASKMESH_WORKER_ID: `worker-${i + 1}`,
      TASKMESH_WORKER_PORT: String(port),
      TASKMESH_WORKER_FILES_ROOT: files,
    }, "worker");
  }
  service("gateway", { ...common, TASKMESH_GATEWAY_PORT: String(ports.gateway), TASKMESH_BOOTSTRAP_API_KEY: apiKey });
  await until("worker-1", () => healthy(ports.worker1));
  await until("worker-2", () => healthy(ports.worker2));
  await until("gateway", () => healthy(ports.gateway));

  // A Prometheus started with deploy/prometheus/prometheus.yml finds this mesh through this file.
  await writePrometheusTargets(
    LOCAL_TARGETS_FILE,
    [
      { component: "config", address: `127.0.0.1:${ports.config}` },
      { component: "scheduler", address: `127.0.0.1:${ports.scheduler}` },
      { component: "worker", address: `127.0.0.1:${ports.worker1}` },
      { component: "worker", address: `127.0.0.1:${ports.worker2}` },
      { component: "gateway", address: `127.0.0.1:${ports.gateway}` },
    ],
    { mesh: "local" },
  );
  const gw = `127.0.0.1:${ports.gateway}`;
  out("");
  out(`taskmesh is up. Logs in .taskmesh/logs/. Ctrl-C stops everything.`);
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
