/**
 * Real `redis-server`s and Sentinels over TLS with ACL users, for the tests of lib/redis.ts' TLS
 * support: certificates from lib/dev-ca.ts, plain-text ports off (`port 0`), the `default` user
 * off, free loopback ports and temp dirs. Readiness is polled (test/support/wait.ts).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { DevCa, type CertFiles } from "../../lib/dev-ca.js";
import { freePort } from "./ports.js";
import { waitFor } from "./wait.js";

/** Who to log in as. */
export interface Login {
  username: string;
  password: string;
}

/** The ACL user of the Redis servers (`~* &* +@all`); their `default` user is off. */
export const REDIS_LOGIN: Login = { username: "taskmesh", password: "Tm.p@ss/w:rd-42" };
/** The ACL user of the Sentinels themselves; their `default` user is off too. */
export const SENTINEL_LOGIN: Login = { username: "tm-sentinel", password: "Sn.s3cr3t&pw?x" };

/** Certificates for a test, all PEM files. */
export interface RedisCerts {
  /** Directory of every file (removed by {@link removeRedisCerts}). */
  readonly dir: string;
  /** The CA certificate the servers trust and present certificates of. */
  readonly ca: string;
  /** Certificate of every Redis and Sentinel (127.0.0.1, localhost), also their client one. */
  readonly server: CertFiles;
  /** A client certificate for taskmesh. */
  readonly client: CertFiles;
  /** A client certificate from another CA, which the servers do not trust, and that CA. */
  readonly stranger: CertFiles & { ca: string };
}

/** Makes {@link RedisCerts} in a new temp dir with lib/dev-ca.ts. */
export async function makeRedisCerts(): Promise<RedisCerts> {
  const dir = await mkdtemp(join(tmpdir(), "taskmesh-redis-tls-"));
  try {
    const ca = await DevCa.open(join(dir, "ca"), { subject: "taskmesh test Redis CA" });
    const server = await ca.issue({ name: "redis-server", hosts: ["127.0.0.1", "localhost"] });
    // A host although a client certificate needs none: DevCa.issue cannot make a certificate with
    // neither a role nor a host (openssl refuses the empty subjectAltName).
    const client = await ca.issue({ name: "redis-client", hosts: ["localhost"] });
    const other = await DevCa.open(join(dir, "other-ca"), { subject: "some other CA" });
    const stranger = await other.issue({ name: "stranger", hosts: ["127.0.0.1", "localhost"] });
    return { dir, ca: ca.caCert, server, client, stranger: { ...stranger, ca: other.caCert } };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Removes what {@link makeRedisCerts} made. */
export async function removeRedisCerts(certs: RedisCerts | undefined): Promise<void> {
  if (certs !== undefined) await rm(certs.dir, { recursive: true, force: true });
}

/**
 * Sends one command over TLS (trusting the test CA, with the test client certificate) to the
 * Redis or Sentinel on a loopback port, on a short-lived connection.
 */
export async function secureCommand(port: number, certs: RedisCerts, login: Login, ...args: (string | number)[]): Promise<unknown> {
  const client = new Redis({
    port,
    host: "127.0.0.1",
    username: login.username,
    password: login.password,
    tls: { ca: readFileSync(certs.ca), cert: readFileSync(certs.client.cert), key: readFileSync(certs.client.key) },
    lazyConnect: true,
    enableReadyCheck: false,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    connectTimeout: 2000,
    commandTimeout: 2000,
  });
  client.on("error", () => undefined);
  try {
    await client.connect();
    const [cmd, ...rest] = args;
    return await client.call(String(cmd), ...rest.map(String));
  } finally {
    client.disconnect();
  }
}

/** A `redis-server` (data node or Sentinel) started by this module. */
export interface SecureServer {
  /** Its TLS port on 127.0.0.1 (it has no plain-text port). */
  readonly port: number;
  readonly dir: string;
  readonly process: ChildProcess;
  /** Whether it is still running. */
  running(): boolean;
  /** kill -9; resolves once it exited. Removes its dir unless `keepDir`. */
  stop(keepDir?: boolean): Promise<void>;
}

/** `tls-*` configuration lines shared by data nodes and Sentinels. */
function tlsLines(certs: RedisCerts, port: number, authClients: boolean): string[] {
  return [
    "port 0",
    `tls-port ${port}`,
    "bind 127.0.0.1",
    `tls-cert-file ${certs.server.cert}`,
    `tls-key-file ${certs.server.key}`,
    `tls-ca-cert-file ${certs.ca}`,
    `tls-auth-clients ${authClients ? "yes" : "no"}`,
    // TLS also for replication and for a Sentinel's links to Redis and to the other Sentinels.
    "tls-replication yes",
    "daemonize no",
    "loglevel warning",
  ];
}

/**
 * Starts `redis-server <dir>/<conf> [--sentinel]` with the configuration `lines` (the file stays
 * in `dir`: a Sentinel rewrites it) and waits until `ready` holds.
 */
async function startServer(
  name: string,
  dir: string,
  port: number,
  lines: string[],
  sentinel: boolean,
  ready: () => Promise<boolean>,
  removeDir: boolean,
): Promise<SecureServer> {
  await mkdir(dir, { recursive: true });
  const conf = join(dir, sentinel ? "sentinel.conf" : "redis.conf");
  writeFileSync(conf, [...lines, `dir ${dir}`, ""].join("\n"));
  const child = spawn("redis-server", sentinel ? [conf, "--sentinel"] : [conf], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (b: Buffer): void => {
    output = (output + b.toString()).slice(-4000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once("exit", () => {
      exited = true;
      resolve();
    }),
  );
  const server: SecureServer = {
    port,
    dir,
    process: child,
    running: () => !exited,
    async stop(keepDir = false) {
      if (!exited) child.kill("SIGKILL");
      await gone;
      if (removeDir && !keepDir) await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`${name} exited: ${output}`);
        return ready().catch(() => false);
      },
      { timeoutMs: 20_000, intervalMs: 50, what: `${name} on TLS port ${port}` },
    );
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

/** Options of {@link startSecureRedis}. */
export interface SecureRedisOptions {
  certs: RedisCerts;
  /** `tls-auth-clients`: whether a client must present a certificate of the CA. @default true */
  authClients?: boolean;
  /** Reuse a TLS port (restart on the same address). */
  port?: number;
  /** Reuse a data dir; then not removed on stop. */
  dir?: string;
  /** Start as a replica of the Redis on this loopback TLS port (over TLS, as the ACL user). */
  replicaOf?: number;
  /** More configuration lines. */
  lines?: string[];
}

/**
 * Starts a real `redis-server` with only a TLS port (free, on 127.0.0.1), the `default` user off
 * and the ACL user {@link REDIS_LOGIN}, and waits until that user's PING over TLS answers.
 */
export async function startSecureRedis(opts: SecureRedisOptions): Promise<SecureServer> {
  const port = opts.port ?? (await freePort());
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), "taskmesh-redis-tls-node-")));
  const { username, password } = REDIS_LOGIN;
  return startServer(
    "redis-server",
    dir,
    port,
    [
      ...tlsLines(opts.certs, port, opts.authClients ?? true),
      'save ""',
      "appendonly no",
      "repl-diskless-sync-delay 0",
      "user default off",
      `user ${username} on >${password} ~* &* +@all`,
      `masteruser ${username}`,
      `masterauth ${password}`,
      ...(opts.replicaOf !== undefined ? [`replicaof 127.0.0.1 ${opts.replicaOf}`] : []),
      ...(opts.lines ?? []),
    ],
    false,
    async () => (await secureCommand(port, opts.certs, REDIS_LOGIN, "PING")) === "PONG",
    opts.dir === undefined,
  );
}

function fields(reply: unknown): Map<string, string> {
  const f = new Map<string, string>();
  if (Array.isArray(reply)) for (let i = 0; i + 1 < reply.length; i += 2) f.set(String(reply[i]), String(reply[i + 1]));
  return f;
}

function infoField(info: unknown, field: string): string | undefined {
  return new RegExp(`^${field}:(.*)$`, "m").exec(String(info))?.[1]?.trim();
}

/** Options of {@link startSecureSentinelGroup}. */
export interface SecureSentinelGroupOptions {
  certs: RedisCerts;
  /** `tls-auth-clients` of every node and Sentinel. @default true */
  authClients?: boolean;
  /** @default "mymaster" */
  masterName?: string;
  /** @default 1 */
  replicas?: number;
  /** @default 3 */
  sentinels?: number;
}

/** A master, its replicas and the Sentinels watching them, everything over TLS with ACL users. */
export interface SecureSentinelGroup {
  readonly masterName: string;
  /**
   * `rediss-sentinel://taskmesh:…@127.0.0.1:p1,…/<masterName>?sentinelUsername=…&sentinelPassword=…`,
   * the `--redis` setting for the group, credentials percent-encoded.
   */
  readonly url: string;
  readonly sentinels: readonly SecureServer[];
  /** TLS ports of the data nodes (master first); roles change on failover. */
  readonly ports: readonly number[];
  /** The master's port as every Sentinel reports it, once they agree. */
  masterPort(): Promise<number | undefined>;
  /**
   * Waits until every Sentinel names the same master (other than `notPort`), it answers ROLE as
   * master with every other node as an online replica, and every Sentinel sees the others and
   * those replicas. Returns the master's port.
   */
  waitHealthy(opts?: { notPort?: number; timeoutMs?: number }): Promise<number>;
  /** Stops every process and removes the data. */
  stop(): Promise<void>;
}

/**
 * Starts a master, `replicas` replicas and `sentinels` Sentinels (quorum: a majority) with TLS
 * ports only: replication, the Sentinels' links to Redis and to each other, and clients all go
 * over TLS (`tls-replication yes`); the Sentinels log in to Redis as {@link REDIS_LOGIN}
 * (`sentinel auth-user/auth-pass`) and to each other as {@link SENTINEL_LOGIN}
 * (`sentinel sentinel-user/sentinel-pass`). Waits until the group is healthy.
 */
export async function startSecureSentinelGroup(opts: SecureSentinelGroupOptions): Promise<SecureSentinelGroup> {
  const { certs } = opts;
  const authClients = opts.authClients ?? true;
  const masterName = opts.masterName ?? "mymaster";
  const replicaCount = opts.replicas ?? 1;
  const root = await mkdtemp(join(tmpdir(), "taskmesh-sentinel-tls-"));
  const nodes: SecureServer[] = [];
  const sentinels: SecureServer[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all([...sentinels, ...nodes].map((s) => s.stop()));
    await rm(root, { recursive: true, force: true });
  };
  try {
    const master = await startSecureRedis({ certs, authClients, dir: join(root, "n0") });
    nodes.push(master);
    for (let i = 1; i <= replicaCount; i++) {
      nodes.push(await startSecureRedis({ certs, authClients, dir: join(root, `n${i}`), replicaOf: master.port }));
    }
    // Replicas in sync before the Sentinels start (a Sentinel learns replicas from INFO).
    await waitFor(
      async () =>
        Number(infoField(await secureCommand(master.port, certs, REDIS_LOGIN, "INFO", "replication"), "connected_slaves")) ===
        replicaCount,
      { timeoutMs: 15_000, intervalMs: 50, what: "replicas connected over TLS" },
    );
    const count = opts.sentinels ?? 3;
    const quorum = Math.floor(count / 2) + 1;
    for (let i = 0; i < count; i++) {
      const port = await freePort();
      const n = masterName;
      sentinels.push(
        await startServer(
          "redis-sentinel",
          join(root, `s${i}`),
          port,
          [
            ...tlsLines(certs, port, authClients),
            "user default off",
            `user ${SENTINEL_LOGIN.username} on >${SENTINEL_LOGIN.password} allchannels +@all`,
            `sentinel sentinel-user ${SENTINEL_LOGIN.username}`,
            `sentinel sentinel-pass ${SENTINEL_LOGIN.password}`,
            `sentinel monitor ${n} 127.0.0.1 ${master.port} ${quorum}`,
            `sentinel auth-user ${n} ${REDIS_LOGIN.username}`,
            `sentinel auth-pass ${n} ${REDIS_LOGIN.password}`,
            `sentinel down-after-milliseconds ${n} 1000`,
            `sentinel failover-timeout ${n} 5000`,
            `sentinel parallel-syncs ${n} 1`,
          ],
          true,
          async () => (await secureCommand(port, certs, SENTINEL_LOGIN, "PING")) === "PONG",
          false,
        ),
      );
    }
    const enc = encodeURIComponent;
    const group: SecureSentinelGroup = {
      masterName,
      url:
        `rediss-sentinel://${enc(REDIS_LOGIN.username)}:${enc(REDIS_LOGIN.password)}@` +
        `${sentinels.map((s) => `127.0.0.1:${s.port}`).join(",")}/${masterName}` +
        `?sentinelUsername=${enc(SENTINEL_LOGIN.username)}&sentinelPassword=${enc(SENTINEL_LOGIN.password)}`,
      sentinels,
      ports: nodes.map((n) => n.port),
      async masterPort() {
        const seen = await Promise.all(
          sentinels.map(async (s) => {
            const r = await secureCommand(s.port, certs, SENTINEL_LOGIN, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName);
            return Array.isArray(r) ? Number(r[1]) : undefined;
          }),
        );
        return seen.every((p) => p !== undefined && p === seen[0]) ? seen[0] : undefined;
      },
      async waitHealthy(o = {}) {
        return waitFor(
          async () => {
            const port = await group.masterPort();
            if (port === undefined || port === o.notPort) return undefined;
            const role = await secureCommand(port, certs, REDIS_LOGIN, "ROLE");
            if (!Array.isArray(role) || role[0] !== "master") return undefined;
            const want = nodes.length - 1;
            if (!Array.isArray(role[2]) || role[2].length < want) return undefined;
            for (const s of sentinels) {
              const m = fields(await secureCommand(s.port, certs, SENTINEL_LOGIN, "SENTINEL", "MASTER", masterName));
              if (m.get("flags") !== "master" || Number(m.get("num-other-sentinels")) < sentinels.length - 1) return undefined;
              const replicas = await secureCommand(s.port, certs, SENTINEL_LOGIN, "SENTINEL", "REPLICAS", masterName);
              const good = Array.isArray(replicas) ? replicas.filter((r) => fields(r).get("flags") === "slave").length : 0;
              if (good < want) return undefined;
            }
            return port;
          },
          { timeoutMs: o.timeoutMs ?? 30_000, intervalMs: 100, what: `TLS Sentinel group ${masterName} healthy` },
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
