import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConnection } from "node:net";
import { freePort } from "./ports.js";
import { waitFor } from "./wait.js";

/** A real backend process (etcd or Redis) started for tests. */
export interface Backend {
  /** Connection string: `redis://127.0.0.1:port` or `127.0.0.1:port`. */
  readonly address: string;
  readonly port: number;
  readonly process: ChildProcess;
  /** Kills the process and removes its data dir. */
  stop(): Promise<void>;
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: "127.0.0.1" });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function startProcess(
  cmd: string,
  args: (dir: string, port: number, peerPort: number) => string[],
  address: (port: number) => string,
  name: string,
  fixedPort?: number,
  fixedDir?: string,
): Promise<Backend> {
  const dir = fixedDir ?? (await mkdtemp(join(tmpdir(), `taskmesh-${name}-`)));
  const port = fixedPort ?? (await freePort());
  const peerPort = await freePort();
  const child = spawn(cmd, args(dir, port, peerPort), { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  let exited = false;
  child.once("exit", () => {
    exited = true;
  });
  await waitFor(
    async () => {
      if (exited) throw new Error(`${name} exited: ${stderr}`);
      return portOpen(port);
    },
    { timeoutMs: 20_000, what: `${name} on port ${port}` },
  );
  return {
    address: address(port),
    port,
    process: child,
    async stop() {
      if (!exited) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await gone;
      }
      if (fixedDir === undefined) await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Options for {@link startRedis}. */
export interface RedisOptions {
  /** Turn on the append-only file with fsync on every write. @default false */
  appendOnly?: boolean;
  /** Reuse a port (to restart on the same address). */
  port?: number;
  /** Reuse a data dir (to restart with the same data); not removed on stop. */
  dir?: string;
}

/** Starts a real `redis-server` on a free loopback port with a temp data dir. */
export function startRedis(opts: RedisOptions = {}): Promise<Backend> {
  return startProcess(
    "redis-server",
    (dir, port) => [
      "--port", String(port),
      "--bind", "127.0.0.1",
      "--dir", dir,
      "--save", "",
      "--appendonly", opts.appendOnly === true ? "yes" : "no",
      "--appendfsync", "always",
      "--daemonize", "no",
      "--loglevel", "warning",
    ],
    (port) => `redis://127.0.0.1:${port}`,
    "redis",
    opts.port,
    opts.dir,
  );
}

/** Starts a real single-member `etcd` on free loopback ports with a temp data dir. */
export function startEtcd(): Promise<Backend> {
  return startProcess(
    "etcd",
    (dir, port, peerPort) => [
      "--name", "test",
      "--data-dir", join(dir, "data"),
      "--listen-client-urls", `http://127.0.0.1:${port}`,
      "--advertise-client-urls", `http://127.0.0.1:${port}`,
      "--listen-peer-urls", `http://127.0.0.1:${peerPort}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peerPort}`,
      "--initial-cluster", `test=http://127.0.0.1:${peerPort}`,
      "--log-level", "error",
    ],
    (port) => `127.0.0.1:${port}`,
    "etcd",
  );
}
