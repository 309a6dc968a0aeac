import { execFile, spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConnection } from "node:net";
import { Redis } from "ioredis";
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

/**
 * Whether the process listening on loopback `port` is `pid` (read with `ss`, from iproute2): true
 * when `ss` cannot tell (not installed, no permission to see the owner), so that only a listener
 * known to be another process counts as not ours.
 */
function listenedByUs(port: number, pid: number | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    execFile("ss", ["-ltnpH", `sport = :${port}`], { timeout: 2000 }, (err, stdout) => {
      if (err !== null || pid === undefined) return resolve(true);
      const owners = [...stdout.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1]));
      resolve(owners.length === 0 || owners.includes(pid));
    });
  });
}

/**
 * Starts a backend process on free ports. A free port can be taken by another process between
 * freePort() and the backend's bind (test files start backends in parallel): a start that fails
 * with "address already in use" is tried again on new ports, up to three times.
 */
async function startProcess(
  cmd: string,
  args: (dir: string, port: number, peerPort: number) => string[],
  address: (port: number) => string,
  name: string,
  fixedPort?: number,
  fixedDir?: string,
): Promise<Backend> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(cmd, args, address, name, fixedPort, fixedDir);
    } catch (err) {
      const taken = /address already in use/i.test((err as Error).message);
      if (!taken || fixedPort !== undefined || attempt >= 3) throw err;
    }
  }
}

async function startOnce(
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
  // Both streams: redis-server writes its bind error to stdout, etcd to stderr.
  const child = spawn(cmd, args(dir, port, peerPort), { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (b: Buffer): void => {
    output = (output + b.toString()).slice(-4000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  let exited = false;
  child.once("exit", () => {
    exited = true;
  });
  try {
    // A process that exits while starting ends the wait at once, with its output.
    // The port must be open by this process: another one that took the port between freePort()
    // and our bind would look just as ready (and ours then exits with "address already in use").
    const how = await waitFor(async () => (exited ? "exited" : (await portOpen(port)) && (await listenedByUs(port, child.pid)) && "listening"), {
      timeoutMs: 20_000,
      what: `${name} on port ${port}`,
    });
    if (how === "exited") throw new Error(`${name} exited while starting: ${output}`);
  } catch (err) {
    if (!exited) child.kill("SIGKILL");
    if (fixedDir === undefined) await rm(dir, { recursive: true, force: true });
    throw err;
  }
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
  /** Start as a replica of the Redis on this loopback port. */
  replicaOf?: number;
  /** More `redis-server` flags. */
  args?: string[];
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
      ...(opts.replicaOf !== undefined ? ["--replicaof", "127.0.0.1", String(opts.replicaOf)] : []),
      ...(opts.args ?? []),
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

/** Starts a real Redis replica of the Redis on loopback port `masterPort`. */
export function startRedisReplica(masterPort: number, opts: RedisOptions = {}): Promise<Backend> {
  return startRedis({ ...opts, replicaOf: masterPort });
}

/** Options for {@link startSentinel}. */
export interface SentinelOptions {
  /** The master group's name. */
  masterName: string;
  /** Loopback port of the master to monitor. */
  masterPort: number;
  /** Sentinels that must agree the master is down. @default 2 */
  quorum?: number;
  /** Silence after which an instance counts as down. @default 1000 */
  downAfterMs?: number;
  /** See `sentinel failover-timeout`. @default 5000 */
  failoverTimeoutMs?: number;
}

/**
 * Starts a real Redis Sentinel (`redis-server <conf> --sentinel`) on a free loopback port. Its
 * configuration file is written into its temp dir, since Sentinel rewrites it.
 */
export function startSentinel(opts: SentinelOptions): Promise<Backend> {
  const n = opts.masterName;
  return startProcess(
    "redis-server",
    (dir, port) => {
      const conf = join(dir, "sentinel.conf");
      writeFileSync(
        conf,
        [
          `port ${port}`,
          "bind 127.0.0.1",
          "daemonize no",
          `dir ${dir}`,
          "loglevel warning",
          `sentinel monitor ${n} 127.0.0.1 ${opts.masterPort} ${opts.quorum ?? 2}`,
          `sentinel down-after-milliseconds ${n} ${opts.downAfterMs ?? 1000}`,
          `sentinel failover-timeout ${n} ${opts.failoverTimeoutMs ?? 5000}`,
          `sentinel parallel-syncs ${n} 1`,
          "",
        ].join("\n"),
      );
      return [conf, "--sentinel"];
    },
    (port) => `127.0.0.1:${port}`,
    "sentinel",
  );
}

/** Sends one command to the Redis or Sentinel on a loopback port (a short-lived connection). */
export async function redisCommand(port: number, ...args: (string | number)[]): Promise<unknown> {
  const client = new Redis({ port, host: "127.0.0.1", lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, commandTimeout: 2000 });
  client.on("error", () => undefined);
  try {
    await client.connect();
    const [cmd, ...rest] = args;
    return await client.call(String(cmd), ...rest.map(String));
  } finally {
    client.disconnect();
  }
}

function infoField(info: unknown, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, "m").exec(String(info))?.[1]?.trim();
}

/** Options for {@link startSentinelGroup}. */
export interface SentinelGroupOptions {
  /** @default 1 */
  replicas?: number;
  /** @default 3 */
  sentinels?: number;
  /** @default "mymaster" */
  masterName?: string;
  /** @default 1000 */
  downAfterMs?: number;
  /** More `redis-server` flags for the master and replicas. */
  redisArgs?: string[];
}

/** A Redis master, its replicas and the Sentinels watching them, all real processes on loopback. */
export interface SentinelGroup {
  readonly masterName: string;
  /** `redis-sentinel://127.0.0.1:p1,…/<masterName>`, the `--redis` setting for the group. */
  readonly url: string;
  readonly sentinels: readonly Backend[];
  /** Ports of the data nodes (master and replicas), in start order; roles change on failover. */
  readonly ports: readonly number[];
  /** The master's port as every Sentinel reports it, once they agree (undefined while they differ). */
  masterPort(): Promise<number | undefined>;
  /** Whether the data node on `port` is running. */
  running(port: number): boolean;
  /** kill -9 of the data node on `port`; resolves once it exited. */
  kill(port: number): Promise<void>;
  /** Starts a killed data node again on its port and dir, as a replica of `masterPort`. */
  restart(port: number, masterPort: number): Promise<void>;
  /**
   * Waits until every Sentinel names the same master, other than `notPort` when given, it answers
   * ROLE as master with `replicas` replicas online (default: every running node but the master),
   * and every Sentinel sees the other Sentinels and those replicas. Returns the master's port.
   */
  waitHealthy(opts?: { notPort?: number; replicas?: number; timeoutMs?: number }): Promise<number>;
  /** Stops every process and removes the data. */
  stop(): Promise<void>;
}

/**
 * Starts a master, `replicas` replicas of it and `sentinels` Sentinels (quorum: a majority) on
 * free loopback ports, and waits until the group is healthy. Replicas sync without the 5 s
 * diskless-sync delay Redis defaults to.
 */
export async function startSentinelGroup(opts: SentinelGroupOptions = {}): Promise<SentinelGroup> {
  const masterName = opts.masterName ?? "mymaster";
  const root = await mkdtemp(join(tmpdir(), "taskmesh-sentinel-group-"));
  const args = ["--repl-diskless-sync-delay", "0", ...(opts.redisArgs ?? [])];
  const nodes = new Map<number, { backend: Backend | undefined; dir: string }>();
  const sentinels: Backend[] = [];
  const startNode = async (dir: string, replicaOf?: number, port?: number): Promise<Backend> => {
    await mkdir(dir, { recursive: true });
    const b = await startRedis({ dir, args, ...(replicaOf !== undefined ? { replicaOf } : {}), ...(port !== undefined ? { port } : {}) });
    nodes.set(b.port, { backend: b, dir });
    return b;
  };
  const stop = async (): Promise<void> => {
    await Promise.all([...sentinels.map((s) => s.stop()), ...[...nodes.values()].map((n) => n.backend?.stop())]);
    await rm(root, { recursive: true, force: true });
  };
  try {
    const master = await startNode(join(root, "n0"));
    for (let i = 1; i <= (opts.replicas ?? 1); i++) await startNode(join(root, `n${i}`), master.port);
    const replicaCount = opts.replicas ?? 1;
    // Replicas in sync before the Sentinels start: a Sentinel learns replicas from the master's
    // INFO, which it reads every 10 s once it has read it first.
    await waitFor(
      async () => Number(infoField(await redisCommand(master.port, "INFO", "replication"), "connected_slaves")) === replicaCount,
      { timeoutMs: 15_000, what: "replicas connected" },
    );
    const count = opts.sentinels ?? 3;
    for (let i = 0; i < count; i++) {
      sentinels.push(
        await startSentinel({
          masterName,
          masterPort: master.port,
          quorum: Math.floor(count / 2) + 1,
          ...(opts.downAfterMs !== undefined ? { downAfterMs: opts.downAfterMs } : {}),
        }),
      );
    }
    const group: SentinelGroup = {
      masterName,
      url: `redis-sentinel://${sentinels.map((s) => s.address).join(",")}/${masterName}`,
      sentinels,
      ports: [...nodes.keys()],
      async masterPort() {
        const seen = await Promise.all(
          sentinels.map(async (s) => {
            const r = await redisCommand(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName);
            return Array.isArray(r) ? Number(r[1]) : undefined;
          }),
        );
        return seen.every((p) => p !== undefined && p === seen[0]) ? seen[0] : undefined;
      },
      running: (port) => nodes.get(port)?.backend !== undefined,
      async kill(port) {
        const n = nodes.get(port);
        const b = n?.backend;
        if (n === undefined || b === undefined) throw new Error(`no running Redis on port ${port}`);
        const exited = new Promise((r) => b.process.once("exit", r));
        b.process.kill("SIGKILL");
        await exited;
        n.backend = undefined;
      },
      async restart(port, masterPort) {
        const n = nodes.get(port);
        if (n === undefined || n.backend !== undefined) throw new Error(`no stopped Redis on port ${port}`);
        await startNode(n.dir, masterPort, port);
      },
      async waitHealthy(o = {}) {
        return waitFor(
          async () => {
            const port = await group.masterPort();
            if (port === undefined || port === o.notPort || !group.running(port)) return undefined;
            const role = await redisCommand(port, "ROLE");
            if (!Array.isArray(role) || role[0] !== "master") return undefined;
            const want = o.replicas ?? [...nodes.values()].filter((n) => n.backend !== undefined).length - 1;
            if (!Array.isArray(role[2]) || role[2].length < want) return undefined;
            for (const s of sentinels) {
              const m = await redisCommand(s.port, "SENTINEL", "MASTER", masterName);
              const f = new Map<string, string>();
              if (Array.isArray(m)) for (let i = 0; i + 1 < m.length; i += 2) f.set(String(m[i]), String(m[i + 1]));
              if (f.get("flags") !== "master" || Number(f.get("num-other-sentinels")) < sentinels.length - 1) return undefined;
              const replicas = await redisCommand(s.port, "SENTINEL", "REPLICAS", masterName);
              const good = Array.isArray(replicas)
                ? replicas.filter((r) => Array.isArray(r) && String(r[r.indexOf("flags") + 1]) === "slave").length
                : 0;
              if (good < want) return undefined;
            }
            return port;
          },
          { timeoutMs: o.timeoutMs ?? 20_000, intervalMs: 50, what: `Sentinel group ${masterName} healthy` },
        );
      },
      stop,
    };
    await group.waitHealthy();
    return group;
  } catch (err) {
    await stop();
    throw err;
  }
}
