/**
 * The multi-host fault test's cluster: five hosts (network namespaces, see netns.ts) and a client
 * host, a real three-member etcd cluster, Redis, the config service, two schedulers, two
 * gateways and four workers, each a real process inside its host's namespace, bound to its host's
 * address. Placement:
 *
 * | host   | processes                              |
 * |--------|----------------------------------------|
 * | a      | etcd-1, scheduler-1                    |
 * | b      | etcd-2, scheduler-2                    |
 * | c      | etcd-3, redis, config                  |
 * | d      | worker-1, worker-2, gateway-1          |
 * | e      | worker-3, worker-4, gateway-2          |
 * | client | the load generator / query agent       |
 *
 * Each scheduler shares its host with an etcd member only, so cutting a host's outgoing etcd
 * connections cuts exactly that scheduler (the member is a server: its peers and its other
 * clients are not touched), and partitioning it takes one member of three (quorum kept). The
 * gateways sit with the workers, so a worker host's partition also tests a gateway coming back.
 *
 * Every process writes its output to `<runDir>/logs/<name>.log` (appended across restarts, with a
 * header line per start); workers append their execution records to `<runDir>/records/`; the
 * load generator its acknowledgements to `<runDir>/acks.jsonl`. Data directories live under
 * `<runDir>/data` and are always removed; the run directory is removed too unless kept (on
 * failure, so the evidence stays).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, writeSync } from "node:fs";
import { mkdir, open, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { DevCa } from "../../lib/dev-ca.js";
import type { MeshRole } from "../../lib/mesh-identity.js";
import { SERVICE_NODE_FLAGS } from "../../lib/node-flags.js";
import { parseRecords, type Ack, type Death, type ExecRecord } from "./checker.js";
import { Network, NS_PREFIX, sweepStale } from "./netns.js";
import { waitFor } from "./wait.js";

const root = join(import.meta.dirname, "../..");

/**
 * Timings of the services in this test, short so that faults are noticed within seconds (the
 * other e2e tests use the same kind of values).
 */
export const TIMINGS = {
  /** Scheduler `--election-ttl` (s). */
  electionTtlS: 2,
  /** Scheduler `--task-lease-ms`. */
  taskLeaseMs: 3000,
  /** Worker `--lease-ttl` (s): its etcd registration. */
  workerLeaseTtlS: 2,
  /** Worker `--slots`. */
  workerSlots: 8,
} as const;

/** The hosts, in address order (`<subnet>.10` is `a`). */
export const HOSTS = ["a", "b", "c", "d", "e", "client"] as const;

/** Which host each process runs on. */
export const PLACEMENT = {
  "etcd-1": "a",
  "scheduler-1": "a",
  "etcd-2": "b",
  "scheduler-2": "b",
  "etcd-3": "c",
  redis: "c",
  config: "c",
  "worker-1": "d",
  "worker-2": "d",
  "gateway-1": "d",
  "worker-3": "e",
  "worker-4": "e",
  "gateway-2": "e",
} as const satisfies Record<string, (typeof HOSTS)[number]>;

/** A process name of the topology. */
export type ProcessName = keyof typeof PLACEMENT;

/** What a process is, which decides how its health is checked and who uses etcd. */
export type ProcessKind = "etcd" | "redis" | "config" | "scheduler" | "worker" | "gateway";

/** While the load runs, the cluster counts as settled only if an execution started this recently. */
const SETTLED_START_WITHIN_MS = 2000;

/** Ports (the same on every host: each host has its own address). */
export const PORTS = { etcdClient: 2379, etcdPeer: 2380, redis: 6379, sentinel: 26379, config: 8082, scheduler: 8081, gateway: 8080, worker: 8090 } as const;

/** A long-running process in a host's namespace, startable again after it ended. */
export class ManagedProcess {
  private child: ChildProcess | undefined;
  private exitedP: Promise<void> = Promise.resolve();
  /** Set while the harness itself ends the process (kill -9, stop): its exit is expected. */
  private expecting = false;

  constructor(
    private readonly mh: Multihost,
    /** Unique name, also the worker id and the log file's name. */
    readonly name: string,
    readonly host: string,
    readonly kind: ProcessKind,
    /** Address other processes dial (`ip:port`). */
    readonly address: string,
    private readonly file: string,
    /** Arguments, or a function giving them at each start (a Redis node restarts as a replica). */
    private readonly args: readonly string[] | (() => readonly string[]),
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  /** The current pid, undefined when not running. */
  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  /** True between spawn and exit. */
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Spawns the process (output appended to its log file) and waits until it is healthy. */
  async start(healthTimeoutMs = 60_000): Promise<void> {
    if (this.running) throw new Error(`${this.name} is already running`);
    const log = openSync(this.mh.logFile(this.name), "a");
    writeSync(log, `\n===== ${new Date().toISOString()} start ${this.name} on host ${this.host} (${this.address})\n`);
    const cmd = this.mh.net.command(this.host, this.file, typeof this.args === "function" ? this.args() : this.args);
    const child = spawn(cmd.file, cmd.args, { cwd: root, env: this.env, stdio: ["ignore", log, log] });
    closeSync(log);
    this.child = child;
    const pid = child.pid;
    if (pid === undefined) throw new Error(`${this.name} did not start`);
    this.mh.net.track(pid);
    this.expecting = false;
    this.exitedP = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.mh.net.untrack(pid);
        if (!this.expecting) {
          this.mh.recordDeath({ process: this.name, pid, t: Date.now(), byNemesis: false, how: signal ?? `exit ${code}` });
        }
        resolve();
      });
    });
    // A process that exits while starting fails the start at once (not at the health deadline).
    const died = this.exitedP.then(() => {
      throw new Error(`${this.name} exited while starting; see ${this.mh.logFile(this.name)}`);
    });
    try {
      await Promise.race([
        died,
        waitFor(() => this.mh.healthy(this), { timeoutMs: healthTimeoutMs, intervalMs: 200, what: `${this.name} healthy` }),
      ]);
    } catch (err) {
      await this.kill9();
      throw err;
    } finally {
      died.catch(() => undefined);
    }
  }

  /** SIGKILL (also ends a stopped process) and waits for the exit; returns the pid and time. */
  async kill9(): Promise<{ pid: number; t: number } | undefined> {
    const pid = this.pid;
    if (pid === undefined || this.child === undefined) return undefined;
    this.expecting = true;
    const t = Date.now();
    this.child.kill("SIGKILL");
    await this.exitedP;
    return { pid, t };
  }

  /** Sends a signal (SIGSTOP, SIGCONT) to the running process. */
  signal(sig: NodeJS.Signals): void {
    if (this.child === undefined || !this.running) throw new Error(`${this.name} is not running`);
    this.child.kill(sig);
  }

  /** SIGCONT then SIGTERM, SIGKILL after `timeoutMs`; waits for the exit. */
  async stop(timeoutMs = 10_000): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return;
    this.expecting = true;
    child.kill("SIGCONT");
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    await this.exitedP;
    clearTimeout(timer);
  }
}

/** A Redis deployment the schedulers and gateways use. */
export interface RedisDeployment {
  /** The `--redis` URL. */
  readonly url: string;
  /** More scheduler flags this deployment needs (durability: `--redis-wait-replicas`). */
  readonly schedulerArgs?: readonly string[];
  /** Its processes (checked for health and liveness like every other). */
  readonly processes: readonly ManagedProcess[];
  /**
   * Makes the deployment fail over (the master fails, a replica takes over) and resolves with
   * what it did, or undefined when this deployment cannot fail over (a single Redis).
   */
  readonly failover?: ((holdMs: number) => Promise<{ start: number; heal: number; affected: string[]; notes: string[] }>) | undefined;
  /** What is not right with the deployment as a whole (beyond each process's health), or "". */
  readonly problem?: (() => Promise<string>) | undefined;
}

/** Starts Redis for the cluster: pluggable, so that a Sentinel deployment can replace the single one. */
export type RedisStarter = (mh: Multihost) => Promise<RedisDeployment>;

/** A redis-server on a host address with its data in `dir`, every write on disk (AOF, fsync always). */
function redisServerArgs(ip: string, dir: string): string[] {
  return [
    "--bind", ip,
    "--port", String(PORTS.redis),
    "--protected-mode", "no",
    "--dir", dir,
    "--save", "",
    "--appendonly", "yes",
    "--appendfsync", "always",
    "--daemonize", "no",
    "--loglevel", "notice",
  ];
}

/**
 * One Redis on host c, append-only with fsync on every write: a single point of failure, so it
 * has no failover (TASKMESH_MULTIHOST_REDIS=single; {@link sentinelRedis} is the default).
 */
export const singleRedis: RedisStarter = async (mh) => {
  const host = PLACEMENT.redis;
  const ip = mh.net.ip(host);
  const dir = join(mh.dataDir, "redis");
  await mkdir(dir, { recursive: true });
  const p = mh.define("redis", host, "redis", `${ip}:${PORTS.redis}`, "redis-server", redisServerArgs(ip, dir));
  await p.start();
  return { url: `redis://${ip}:${PORTS.redis}`, processes: [p] };
};

/** Name of the Sentinel master group. */
const SENTINEL_MASTER = "taskmesh";

/** Where the Sentinel deployment's processes run: data nodes on c and d, Sentinels on a, b and e. */
const SENTINEL_PLACEMENT = {
  nodes: [
    ["redis", "c"],
    ["redis-replica", "d"],
  ],
  sentinels: [
    ["sentinel-1", "a"],
    ["sentinel-2", "b"],
    ["sentinel-3", "e"],
  ],
} as const;

function fieldsOf(reply: unknown): Map<string, string> {
  const f = new Map<string, string>();
  if (Array.isArray(reply)) for (let i = 0; i + 1 < reply.length; i += 2) f.set(String(reply[i]), String(reply[i + 1]));
  return f;
}

/**
 * A Redis master (host c) with one replica (host d), watched by three Sentinels (hosts a, b, e;
 * quorum 2), reached through `redis-sentinel://…` (the services must understand that form). The
 * schedulers acknowledge a submit once that replica has it (`--redis-wait-replicas 1`, every
 * replica: whichever Sentinel promotes has every acknowledged task). Its failover is a `kill -9`
 * of the current master: once every Sentinel names a new master, the old one is started again as
 * its replica, as a supervisor would.
 */
export const sentinelRedis: RedisStarter = async (mh) => {
  const nodes = new Map<string, { process: ManagedProcess; replicaOf: string | undefined }>();
  const master0 = `${mh.net.ip("c")}:${PORTS.redis}`;
  for (const [name, host] of SENTINEL_PLACEMENT.nodes) {
    const ip = mh.net.ip(host);
    const dir = join(mh.dataDir, name);
    await mkdir(dir, { recursive: true });
    const node: { process: ManagedProcess | undefined; replicaOf: string | undefined } = {
      process: undefined,
      replicaOf: name === "redis" ? undefined : master0,
    };
    node.process = mh.define(name, host, "redis", `${ip}:${PORTS.redis}`, "redis-server", () => [
      ...redisServerArgs(ip, dir),
      "--repl-diskless-sync-delay", "0",
      ...(node.replicaOf === undefined ? [] : ["--replicaof", ...node.replicaOf.split(":")]),
    ]);
    nodes.set(name, node as { process: ManagedProcess; replicaOf: string | undefined });
  }
  for (const n of nodes.values()) await n.process.start();
  await waitFor(
    async () => String(await mh.redisCommand(master0, ["INFO", "replication"])).includes(`connected_slaves:${nodes.size - 1}`),
    { timeoutMs: 20_000, intervalMs: 200, what: "Redis replicas in sync" },
  );
  const sentinels: ManagedProcess[] = [];
  for (const [name, host] of SENTINEL_PLACEMENT.sentinels) {
    const ip = mh.net.ip(host);
    const dir = join(mh.dataDir, name);
    await mkdir(dir, { recursive: true });
    const conf = join(dir, "sentinel.conf");
    // Sentinel rewrites its configuration file: write it once, restarts keep what it learned.
    // down-after 2 s, not 1 s: with 1 s, in 2 of about 30 runs a Sentinel that had just switched
    // to the new master declared it down 1 s later (no answer yet on a loaded machine), got the
    // quorum at once and failed over again, to the old master restarted a second before; the
    // results recorded meanwhile on the deposed master were discarded, so their tasks ran again.
    await writeFile(
      conf,
      [
        `port ${PORTS.sentinel}`,
        `bind ${ip}`,
        "protected-mode no",
        "daemonize no",
        `dir ${dir}`,
        `sentinel monitor ${SENTINEL_MASTER} ${master0.replace(":", " ")} 2`,
        `sentinel down-after-milliseconds ${SENTINEL_MASTER} 2000`,
        `sentinel failover-timeout ${SENTINEL_MASTER} 5000`,
        `sentinel parallel-syncs ${SENTINEL_MASTER} 1`,
        "",
      ].join("\n"),
    );
    sentinels.push(mh.define(name, host, "redis", `${ip}:${PORTS.sentinel}`, "redis-server", [conf, "--sentinel"]));
  }
  await Promise.all(sentinels.map((p) => p.start()));

  /** The master every Sentinel names, or undefined while they disagree. */
  const agreedMaster = async (): Promise<string | undefined> => {
    const seen = await Promise.all(
      sentinels.map(async (s) => {
        const r = await mh.redisCommand(s.address, ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]).catch(() => undefined);
        return Array.isArray(r) ? `${String(r[0])}:${String(r[1])}` : undefined;
      }),
    );
    return seen.every((a) => a !== undefined && a === seen[0]) ? seen[0] : undefined;
  };
  const problem = async (): Promise<string> => {
    const master = await agreedMaster();
    if (master === undefined) return "the Sentinels do not agree on a master";
    for (const s of sentinels) {
      const f = fieldsOf(await mh.redisCommand(s.address, ["SENTINEL", "MASTER", SENTINEL_MASTER]));
      if (f.get("flags") !== "master") return `${s.name} sees the master as ${f.get("flags") ?? "?"}`;
      if (Number(f.get("num-other-sentinels")) < sentinels.length - 1) return `${s.name} sees ${f.get("num-other-sentinels") ?? "?"} other Sentinels`;
      if (Number(f.get("num-slaves")) < nodes.size - 1) return `${s.name} sees ${f.get("num-slaves") ?? "?"} replicas`;
    }
    const info = String(await mh.redisCommand(master, ["INFO", "replication"]));
    if (!info.includes("role:master") || !info.includes(`connected_slaves:${nodes.size - 1}`)) return `master ${master}: replicas not connected`;
    return "";
  };
  await waitFor(async () => (await problem()) === "", { timeoutMs: 30_000, intervalMs: 250, what: "Sentinel group healthy" });
  return {
    url: `redis-sentinel://${sentinels.map((s) => s.address).join(",")}/${SENTINEL_MASTER}`,
    schedulerArgs: ["--redis-wait-replicas", String(nodes.size - 1), "--redis-wait-timeout-ms", "1000"],
    processes: [...[...nodes.values()].map((n) => n.process), ...sentinels],
    problem,
    async failover() {
      const master = await agreedMaster();
      const old = [...nodes.values()].find((n) => n.process.address === master);
      if (master === undefined || old === undefined) throw new Error("no agreed Redis master to fail");
      const start = Date.now();
      const killed = await old.process.kill9();
      if (killed !== undefined) mh.recordDeath({ process: old.process.name, pid: killed.pid, t: killed.t, byNemesis: true, how: "SIGKILL" });
      const next = await waitFor(
        async () => {
          const m = await agreedMaster();
          return m !== undefined && m !== master ? m : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 100, what: "Sentinels agreeing on a new master" },
      );
      const promoted = Date.now();
      old.replicaOf = next;
      await old.process.start();
      return {
        start,
        heal: Date.now(),
        affected: [old.process.name],
        notes: [`killed master ${old.process.name} (${master}); Sentinels agreed on ${next} after ${promoted - start} ms; restarted the old one as its replica`],
      };
    },
  };
};

/** Options for {@link Multihost.start}. */
export interface MultihostOptions {
  /** @default singleRedis */
  redis?: RedisStarter;
}

/** Status of the cluster as a gateway reports it. */
export interface ClusterStatusView {
  schedulers: { id: string; address: string; leader: boolean }[];
  workers: { id: string; address: string; slots: number; slotsUsed: number }[];
  queues: { name: string; queued: number; running: number; retryWait: number; dead: number }[];
}

/** Final state of a task as the load generator read it. */
export interface TaskView {
  id: string;
  status?: string;
  attempt?: number;
  worker?: string;
  finishedAt?: number;
  error?: string;
}

/**
 * The load generator process, also the test's agent inside the namespaces: JSON requests on its
 * stdin, replies on its stdout (test/fixtures/loadgen.ts).
 */
class Agent {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly ready: Promise<void>;
  private gone = false;

  constructor(readonly child: ChildProcess) {
    let onReady: () => void = () => undefined;
    this.ready = new Promise((r) => (onReady = r));
    const out = child.stdout;
    if (out === null) throw new Error("agent without stdout");
    createInterface({ input: out }).on("line", (line) => {
      let msg: { id: number; ok: boolean; result?: unknown; error?: string };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return;
      }
      if (msg.id === 0) {
        onReady();
        return;
      }
      const p = this.pending.get(msg.id);
      if (p === undefined) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(msg.error ?? "agent error"));
    });
    child.once("exit", (code, signal) => {
      this.gone = true;
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`agent exited (${signal ?? code})`));
      }
      this.pending.clear();
    });
  }

  /** Resolves once the agent has said it is ready (bounded). */
  async whenReady(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.ready,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("agent did not start")), timeoutMs))),
    ]).finally(() => clearTimeout(timer));
  }

  /** One request; rejects on the agent's error or after `timeoutMs`. */
  request<T>(op: string, args: Record<string, unknown> = {}, timeoutMs = 10_000): Promise<T> {
    if (this.gone) return Promise.reject(new Error("agent is gone"));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`agent ${op} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.child.stdin?.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  /** SIGTERM (the load generator stops and flushes), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 10_000): Promise<void> {
    if (this.gone) return;
    const exited = new Promise<void>((r) => this.child.once("exit", () => r()));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}

/** The running cluster: processes, the network, the agent, and what happened to them. */
export class Multihost {
  readonly processes = new Map<string, ManagedProcess>();
  /** Every process end during the run: nemesis kills and unexpected exits. */
  readonly deaths: Death[] = [];
  readonly apiKey = `tm_multihost_${Math.random().toString(36).slice(2)}`;
  readonly etcdRoot: string;
  readonly redisPrefix: string;
  private agentP: Agent | undefined;
  private redisP: RedisDeployment | undefined;
  /** Whether the load runs (then "settled" includes "executions are starting"). */
  private loadRunning = false;
  /** The mesh's CA file (every service talks mTLS, with a certificate of its own). */
  private caFile = "";
  /** The mesh flags (CA, certificate, key) of each service. */
  private readonly meshFlags = new Map<string, string[]>();
  /** Files read so far, by path: how far, the unfinished last line, the parsed lines. */
  private readonly tails = new Map<string, { offset: number; rest: string; items: unknown[] }>();

  private constructor(
    readonly net: Network,
    /** Everything of this run: logs, records, acks (and data, always removed). */
    readonly runDir: string,
  ) {
    this.etcdRoot = `/tmh-${net.tag}/`;
    this.redisPrefix = `tmh-${net.tag}`;
  }

  /** Data directories (etcd, Redis, worker files, config caches). */
  get dataDir(): string {
    return join(this.runDir, "data");
  }

  /** Where a process's output goes. */
  logFile(name: string): string {
    return join(this.runDir, "logs", `${name}.log`);
  }

  /** The ack file of the load generator. */
  get ackFile(): string {
    return join(this.runDir, "acks.jsonl");
  }

  /** The agent (load generator) in the client host. */
  get agent(): Agent {
    if (this.agentP === undefined) throw new Error("agent not started");
    return this.agentP;
  }

  /** The Redis deployment. */
  get redis(): RedisDeployment {
    if (this.redisP === undefined) throw new Error("redis not started");
    return this.redisP;
  }

  /** `ip:2379` of every etcd member. */
  get etcdEndpoints(): string[] {
    return ["etcd-1", "etcd-2", "etcd-3"].map((m) => `${this.net.ip(this.hostOf(m))}:${PORTS.etcdClient}`);
  }

  /** Gateway addresses, gateway-1 first. */
  get gateways(): string[] {
    return ["gateway-1", "gateway-2"].map((g) => this.process(g).address);
  }

  /** The host a process runs on. */
  hostOf(name: string): string {
    const h = this.processes.get(name)?.host ?? (PLACEMENT as Record<string, string>)[name];
    if (h === undefined) throw new Error(`unknown process ${name}`);
    return h;
  }

  /** A process by name. */
  process(name: string): ManagedProcess {
    const p = this.processes.get(name);
    if (p === undefined) throw new Error(`unknown process ${name}`);
    return p;
  }

  /** Processes on one host. */
  onHost(host: string): ManagedProcess[] {
    return [...this.processes.values()].filter((p) => p.host === host);
  }

  /** Records a process's end (called by ManagedProcess on an unexpected exit, by the nemesis on a kill). */
  recordDeath(d: Death): void {
    this.deaths.push(d);
  }

  /** Declares a process (not started). */
  define(
    name: string,
    host: string,
    kind: ProcessKind,
    address: string,
    file: string,
    args: readonly string[] | (() => readonly string[]),
    env: NodeJS.ProcessEnv = {},
  ): ManagedProcess {
    const base: NodeJS.ProcessEnv = {};
    // The services read TASKMESH_* and OTEL_* from the environment: only what we set here counts.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TASKMESH_") && !k.startsWith("OTEL_")) base[k] = v;
    const p = new ManagedProcess(this, name, host, kind, address, file, args, { ...base, TASKMESH_LOG_LEVEL: "info", ...env });
    this.processes.set(name, p);
    return p;
  }

  /** Defines a taskmesh service (`node --import tsx services/<service>/main.ts …`). */
  private defineService(name: ProcessName, kind: Exclude<ProcessKind, "etcd" | "redis">, port: number, args: string[], env: NodeJS.ProcessEnv = {}): ManagedProcess {
    const host = PLACEMENT[name];
    const ip = this.net.ip(host);
    return this.define(
      name,
      host,
      kind,
      `${ip}:${port}`,
      process.execPath,
      [
        ...SERVICE_NODE_FLAGS,
        "--import", "tsx",
        join(root, "services", kind, "main.ts"),
        "--host", ip,
        "--port", String(port),
        "--etcd", this.etcdEndpoints.join(","),
        "--etcd-root", this.etcdRoot,
        "--config-cache", join(this.dataDir, "cache", `${name}.json`),
        ...(this.meshFlags.get(name) ?? []),
        ...args,
      ],
      env,
    );
  }

  /** Whether a process answers its health check (through the agent, from the client host). */
  async healthy(p: ManagedProcess): Promise<boolean> {
    const [ip, port] = p.address.split(":") as [string, string];
    try {
      switch (p.kind) {
        case "etcd": {
          const r = await this.agent.request<{ status: number; body: string }>("http", { url: `http://${p.address}/health`, timeoutMs: 1000 }, 3000);
          return r.status === 200 && r.body.includes('"true"');
        }
        case "redis":
          return (await this.agent.request<{ ok: boolean }>("redisPing", { host: ip, port: Number(port), timeoutMs: 1000 }, 3000)).ok;
        default: {
          // The gateway's public port is plaintext; every internal port speaks mTLS.
          const ca = p.kind === "gateway" ? {} : { ca: this.caFile };
          const r = await this.agent.request<{ status: number | null }>("healthz", { host: ip, port: Number(port), timeoutMs: 1000, ...ca }, 3000);
          return r.status === 200;
        }
      }
    } catch {
      return false;
    }
  }

  /** Starts the network, every process and the agent; tears everything down if any start fails. */
  static async start(opts: MultihostOptions = {}): Promise<Multihost> {
    await sweepStale();
    const net = await Network.create({ hosts: HOSTS });
    const runDir = join(tmpdir(), `${NS_PREFIX}${process.pid}-${net.tag}`);
    const mh = new Multihost(net, runDir);
    net.dirs.push(join(runDir, "data"));
    try {
      await mkdir(join(runDir, "logs"), { recursive: true });
      await mkdir(join(runDir, "records"), { recursive: true });
      await mkdir(join(runDir, "data", "cache"), { recursive: true });
      await mkdir(join(runDir, "data", "files"), { recursive: true });
      await mh.startAgent();
      await mh.startAll(opts.redis ?? singleRedis);
    } catch (err) {
      await mh.close({ keepLogs: true });
      throw new Error(`${(err as Error).message} (logs in ${runDir})`, { cause: err });
    }
    return mh;
  }

  private async startAgent(): Promise<void> {
    const log = openSync(this.logFile("loadgen"), "a");
    const cmd = this.net.command("client", process.execPath, ["--import", "tsx", join(root, "test/fixtures/loadgen.ts")]);
    const child = spawn(cmd.file, cmd.args, { cwd: root, env: { ...process.env, TASKMESH_API_KEY: this.apiKey }, stdio: ["pipe", "pipe", log] });
    closeSync(log);
    if (child.pid !== undefined) this.net.track(child.pid);
    this.agentP = new Agent(child);
    await this.agentP.whenReady(30_000);
  }

  private async startAll(redis: RedisStarter): Promise<void> {
    const token = `tmh-${this.net.tag}`;
    const members = ["etcd-1", "etcd-2", "etcd-3"] as const;
    const cluster = members.map((m) => `${m}=http://${this.net.ip(PLACEMENT[m])}:${PORTS.etcdPeer}`).join(",");
    for (const m of members) {
      const ip = this.net.ip(PLACEMENT[m]);
      this.define(m, PLACEMENT[m], "etcd", `${ip}:${PORTS.etcdClient}`, "etcd", [
        "--name", m,
        "--data-dir", join(this.dataDir, m),
        "--listen-client-urls", `http://${ip}:${PORTS.etcdClient}`,
        "--advertise-client-urls", `http://${ip}:${PORTS.etcdClient}`,
        "--listen-peer-urls", `http://${ip}:${PORTS.etcdPeer}`,
        "--initial-advertise-peer-urls", `http://${ip}:${PORTS.etcdPeer}`,
        "--initial-cluster", cluster,
        "--initial-cluster-token", token,
        "--initial-cluster-state", "new",
        // As the README recommends (etcd 3.4 leaves it off): a member that comes back from a
        // partition with a higher term then does not depose the leader. Without it, the member
        // cut off with the leading scheduler's host kept calling elections it could not win (its
        // log was behind) and etcd had no leader for up to 5 s after the heal, longer than any
        // scheduler lease.
        "--pre-vote",
        "--log-level", "warn",
      ]);
    }
    await Promise.all(members.map((m) => this.process(m).start()));
    this.redisP = await redis(this);
    await this.issueCertificates();
    const common = ["--redis", this.redis.url, "--redis-prefix", this.redisPrefix];
    const schedulerRedis = this.redis.schedulerArgs ?? [];
    this.defineService("config", "config", PORTS.config, []);
    for (const s of ["scheduler-1", "scheduler-2"] as const) {
      this.defineService(s, "scheduler", PORTS.scheduler, [
        "--id", s,
        ...common,
        "--task-lease-ms", String(TIMINGS.taskLeaseMs),
        "--election-ttl", String(TIMINGS.electionTtlS),
        ...schedulerRedis,
      ]);
    }
    const workers = ["worker-1", "worker-2", "worker-3", "worker-4"] as const;
    workers.forEach((w, i) => {
      this.defineService(
        w,
        "worker",
        PORTS.worker + (i % 2),
        [
          "--id", w,
          "--slots", String(TIMINGS.workerSlots),
          "--lease-ttl", String(TIMINGS.workerLeaseTtlS),
          "--handlers", join(root, "test/fixtures/handlers/recorder.ts"),
          "--files-root", join(this.dataDir, "files"),
          "--shutdown-grace-ms", "3000",
        ],
        { TASKMESH_RECORDER_FILE: join(this.runDir, "records", `${w}.jsonl`), TASKMESH_RECORDER_WORKER: w },
      );
    });
    for (const g of ["gateway-1", "gateway-2"] as const) {
      this.defineService(g, "gateway", PORTS.gateway, common, { TASKMESH_BOOTSTRAP_API_KEY: this.apiKey });
    }
    await this.process("config").start();
    await Promise.all(["scheduler-1", "scheduler-2"].map((s) => this.process(s).start()));
    await Promise.all(workers.map((w) => this.process(w).start()));
    await Promise.all(["gateway-1", "gateway-2"].map((g) => this.process(g).start()));
    await waitFor(async () => (await this.settled()).ok, { timeoutMs: 30_000, intervalMs: 250, what: "cluster settled after start" });
  }

  /** A CA for this cluster and a certificate per service, naming the address it is dialled at. */
  private async issueCertificates(): Promise<void> {
    const ca = await DevCa.open(join(this.dataDir, "tls"));
    this.caFile = ca.caCert;
    const services = Object.keys(PLACEMENT).filter((n) => !n.startsWith("etcd") && n !== "redis") as ProcessName[];
    for (const name of services) {
      const role = name.replace(/-\d+$/, "") as MeshRole;
      const files = await ca.issue({ role, name, hosts: [this.net.ip(PLACEMENT[name])] });
      this.meshFlags.set(name, ["--mesh-ca", ca.caCert, "--mesh-cert", files.cert, "--mesh-key", files.key]);
    }
  }

  /**
   * Calls an internal service from the client host as an outsider would (lib/mesh-security.ts):
   * in plaintext, and over TLS with no client certificate; how each call ended (`ok` or a code name).
   */
  intrude(name: ProcessName): Promise<{ plaintext: string; noCertificate: string }> {
    const p = this.process(name);
    return this.agent.request("intrude", { address: p.address, kind: p.kind, ca: this.caFile }, 10_000);
  }

  /** One Redis (or Sentinel) command, sent from the client host. */
  redisCommand(address: string, args: (string | number)[]): Promise<unknown> {
    const [host, port] = address.split(":") as [string, string];
    return this.agent.request("redisCommand", { host, port: Number(port), args: args.map(String) }, 5000);
  }

  /** The cluster status through one gateway. */
  clusterStatus(gateway: string, timeoutMs = 2000): Promise<ClusterStatusView> {
    return this.agent.request<ClusterStatusView>("clusterStatus", { gateway, timeoutMs }, timeoutMs + 2000);
  }

  /**
   * Whether the cluster is back to normal: every process running and healthy, and through every
   * gateway two schedulers with exactly one leader and all four workers. `why` says what is not.
   */
  async settled(): Promise<{ ok: boolean; why: string }> {
    const procs = [...this.processes.values()];
    const down = procs.filter((p) => !p.running).map((p) => p.name);
    if (down.length > 0) return { ok: false, why: `not running: ${down.join(", ")}` };
    const health = await Promise.all(procs.map(async (p) => [p.name, await this.healthy(p)] as const));
    const sick = health.filter(([, ok]) => !ok).map(([n]) => n);
    if (sick.length > 0) return { ok: false, why: `not healthy: ${sick.join(", ")}` };
    const redisProblem = (await this.redis.problem?.().catch((err: unknown) => String(err))) ?? "";
    if (redisProblem !== "") return { ok: false, why: `redis: ${redisProblem}` };
    for (const g of this.gateways) {
      let s: ClusterStatusView;
      try {
        s = await this.clusterStatus(g);
      } catch (err) {
        return { ok: false, why: `${g}: ${(err as Error).message}` };
      }
      const leaders = s.schedulers.filter((x) => x.leader).length;
      if (s.schedulers.length !== 2 || leaders !== 1) return { ok: false, why: `${g}: ${s.schedulers.length} schedulers, ${leaders} leaders` };
      const ids = s.workers.map((w) => w.id).sort();
      if (ids.join() !== "worker-1,worker-2,worker-3,worker-4") return { ok: false, why: `${g}: workers ${ids.join(",")}` };
    }
    if (this.loadRunning) {
      const last = (await this.records()).reduce((m, r) => (r.ev === "start" ? Math.max(m, r.t) : m), 0);
      if (Date.now() - last > SETTLED_START_WITHIN_MS) return { ok: false, why: `no execution started for ${Date.now() - last} ms` };
    }
    return { ok: true, why: "" };
  }

  /** The leading scheduler's process name, as the gateways report it (both must agree). */
  async leaderScheduler(): Promise<string> {
    const names = await Promise.all(
      this.gateways.map(async (g) => {
        const s = await this.clusterStatus(g);
        const leader = s.schedulers.find((x) => x.leader);
        return [...this.processes.values()].find((p) => p.kind === "scheduler" && p.address === leader?.address)?.name;
      }),
    );
    if (names[0] === undefined || names.some((n) => n !== names[0])) throw new Error(`no agreed scheduler leader: ${names.join(" / ")}`);
    return names[0];
  }

  /** Runs etcdctl against every member, from host c (its text output is parsed: ids are uint64). */
  private etcdctl(args: string[]): Promise<string> {
    return this.net.exec(PLACEMENT["etcd-3"], "etcdctl", ["--endpoints", this.etcdEndpoints.join(","), "--command-timeout=3s", ...args], 10_000);
  }

  /** The etcd member that leads the etcd cluster. */
  async etcdLeader(): Promise<string> {
    // `endpoint status -w simple`: endpoint, id, version, db size, is leader, is learner, term, ...
    const out = await this.etcdctl(["endpoint", "status", "-w", "simple"]);
    const row = out.split("\n").map((l) => l.split(",").map((c) => c.trim())).find((c) => c[4] === "true");
    const p = [...this.processes.values()].find((x) => x.kind === "etcd" && row !== undefined && row[0]?.replace(/^https?:\/\//, "") === x.address);
    if (p === undefined) throw new Error(`no etcd leader in: ${out}`);
    return p.name;
  }

  /**
   * Makes `member` the etcd leader (`etcdctl move-leader`) unless it is already, and waits until
   * it is: faults start from the same etcd leadership every run.
   */
  async moveEtcdLeader(member: string): Promise<void> {
    if ((await this.etcdLeader()) === member) return;
    // `member list -w simple`: id (hex), status, name, peer urls, client urls, is learner.
    const out = await this.etcdctl(["member", "list", "-w", "simple"]);
    const id = out.split("\n").map((l) => l.split(",").map((c) => c.trim())).find((c) => c[2] === member)?.[0];
    if (id === undefined) throw new Error(`no etcd member ${member} in: ${out}`);
    await this.etcdctl(["move-leader", id]);
    await waitFor(async () => (await this.etcdLeader()) === member, { timeoutMs: 10_000, intervalMs: 200, what: `${member} leading etcd` });
  }

  /** Starts every process that is not running (as a supervisor would); returns their names. */
  async restartDead(): Promise<string[]> {
    const dead = [...this.processes.values()].filter((p) => !p.running);
    await Promise.all(dead.map((p) => p.start()));
    return dead.map((p) => p.name);
  }

  /** Starts the load (see test/fixtures/loadgen.ts). */
  async startLoad(o: { ratePerSecond: number; minMs: number; maxMs: number }): Promise<void> {
    this.loadRunning = true;
    await this.agent.request("startLoad", {
      load: {
        gateways: this.gateways,
        ackFile: this.ackFile,
        keyPrefix: `tmh-${this.net.tag}`,
        ratePerSecond: o.ratePerSecond,
        minMs: o.minMs,
        maxMs: o.maxMs,
        callTimeoutMs: 2000,
        giveUpMs: 30_000,
        maxInFlight: 500,
      },
    });
  }

  /** Stops the load and waits (bounded) for the submissions in flight; returns its counters. */
  stopLoad(): Promise<Record<string, unknown>> {
    this.loadRunning = false;
    return this.agent.request("stopLoad", { waitMs: 35_000 }, 40_000);
  }

  /** The load generator's counters. */
  loadStats(): Promise<Record<string, unknown>> {
    return this.agent.request("stats", {}, 5000);
  }

  /**
   * Every complete line of a file that only grows, parsed; read incrementally (only what was
   * appended since the last call is read and parsed).
   */
  private async follow<T>(path: string, parse: (line: string) => T | undefined): Promise<T[]> {
    let tail = this.tails.get(path);
    if (tail === undefined) this.tails.set(path, (tail = { offset: 0, rest: "", items: [] }));
    const items = tail.items as T[];
    const fh = await open(path, "r").catch(() => undefined);
    if (fh === undefined) return items;
    try {
      const { size } = await fh.stat();
      if (size > tail.offset) {
        const buf = Buffer.alloc(size - tail.offset);
        const { bytesRead } = await fh.read(buf, 0, buf.length, tail.offset);
        tail.offset += bytesRead;
        // The lines are ASCII JSON: a read never splits a character.
        const text = tail.rest + buf.subarray(0, bytesRead).toString("utf8");
        const cut = text.lastIndexOf("\n") + 1;
        for (const line of text.slice(0, cut).split("\n")) {
          const v = line === "" ? undefined : parse(line);
          if (v !== undefined) items.push(v);
        }
        tail.rest = text.slice(cut);
      }
    } finally {
      await fh.close();
    }
    return items;
  }

  /** Acknowledged tasks so far. */
  async acks(): Promise<Ack[]> {
    const acks = await this.follow(this.ackFile, (line) => {
      try {
        const a = JSON.parse(line) as { id: string; t: number };
        return { id: a.id, t: a.t };
      } catch {
        return undefined; // not a whole line of the load generator's: cannot happen with single appends
      }
    });
    return [...acks];
  }

  /** Every worker's execution records so far. */
  async records(): Promise<ExecRecord[]> {
    const dir = join(this.runDir, "records");
    const out: ExecRecord[] = [];
    for (const f of (await readdir(dir)).sort()) {
      out.push(...(await this.follow(join(dir, f), (line) => parseRecords(`${line}\n`)[0])));
    }
    return out;
  }

  /** Final states of tasks, read through the gateways from the client host. */
  getTasks(ids: string[], timeoutMs = 30_000): Promise<TaskView[]> {
    return this.agent.request<TaskView[]>("getTasks", { gateways: this.gateways, ids, timeoutMs }, timeoutMs + 5000);
  }

  /**
   * Stops everything (processes, agent), deletes the namespaces and the data; removes the run
   * directory too unless `keepLogs`. Idempotent.
   */
  async close(o: { keepLogs: boolean }): Promise<void> {
    await this.agentP?.stop(5000).catch(() => undefined);
    await Promise.all([...this.processes.values()].map((p) => p.stop(5000).catch(() => undefined)));
    await this.net.destroy();
    await rm(this.dataDir, { recursive: true, force: true });
    if (!o.keepLogs) await rm(this.runDir, { recursive: true, force: true });
  }
}
