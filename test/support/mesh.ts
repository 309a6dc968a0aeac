import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DevCa } from "../../lib/dev-ca.js";
import { probeHealthz } from "../../lib/health.js";
import type { MeshRole } from "../../lib/mesh-identity.js";
import { SERVICE_NODE_FLAGS } from "../../lib/node-flags.js";
import { freePort } from "./ports.js";
import { waitFor } from "./wait.js";

const root = join(import.meta.dirname, "../..");

/** A service running as a real child process. */
export interface ServiceProcess {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  readonly child: ChildProcess;
  /** Output so far (stdout and stderr), for diagnostics. */
  output(): string;
  /** Resolves with the exit code or signal when the process ends. */
  readonly exited: Promise<number | string | null>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM, and wait for the exit (SIGKILL after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<number | string | null>;
}

/** Starts `services/<service>/main.ts` with flags; waits until `/healthz` answers 200. */
export async function startService(
  service: string,
  name: string,
  args: string[],
  opts: { port?: number; env?: NodeJS.ProcessEnv; healthTimeoutMs?: number; healthCa?: string } = {},
): Promise<ServiceProcess> {
  const port = opts.port ?? (await freePort());
  const healthCa = opts.healthCa === undefined ? undefined : await readFile(opts.healthCa);
  // `node --import tsx` runs the service in this one process (the tsx CLI would add a wrapper
  // process, and a SIGKILL of the wrapper leaves the service running).
  const main = join(root, "services", service, "main.ts");
  // TASKMESH_CPU_PROF=<dir> profiles every service process (V8 .cpuprofile files, for benchmarks).
  const prof = process.env.TASKMESH_CPU_PROF;
  const profile = prof === undefined || prof === "" ? [] : ["--cpu-prof", "--cpu-prof-dir", join(prof, name)];
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, ...profile, "--import", "tsx", main, "--port", String(port), ...args], {
    cwd: root,
    env: { ...process.env, TASKMESH_LOG_LEVEL: process.env.TASKMESH_LOG_LEVEL ?? "info", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const keep = (b: Buffer): void => {
    out = (out + b.toString()).slice(-200_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<number | string | null>((res) =>
    child.once("exit", (code, signal) => res(code ?? signal)),
  );
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const proc: ServiceProcess = {
    name,
    port,
    address: `127.0.0.1:${port}`,
    child,
    output: () => out,
    exited,
    async kill() {
      if (!gone) child.kill("SIGKILL");
      await exited;
    },
    async stop(timeoutMs = 20_000) {
      if (!gone) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
  try {
    // A process that exits while starting fails the start at once, with its output.
    const died = exited.then((how) => {
      throw new Error(`${name} exited (${String(how)}) while starting:\n${out.slice(-4000)}`);
    });
    await Promise.race([
      died,
      waitFor(
        async () => (await probeHealthz("127.0.0.1", port, healthCa === undefined ? {} : { ca: healthCa })) === 200,
        { timeoutMs: opts.healthTimeoutMs ?? 30_000, what: `${name} healthy`, intervalMs: 50 },
      ),
    ]);
    died.catch(() => undefined);
  } catch (err) {
    await proc.kill();
    throw err;
  }
  return proc;
}

/** Options for {@link startMesh}. */
export interface MeshOptions {
  etcdEndpoint: string;
  redisUrl: string;
  /** Unique per test: etcd root and Redis prefix derive from it. */
  prefix: string;
  workers?: number;
  slots?: number;
  schedulers?: number;
  config?: boolean;
  apiKey?: string;
  /** Extra flags for every worker. */
  workerArgs?: string[];
  /** Extra flags for every scheduler. */
  schedulerArgs?: string[];
  /** Extra flags for the gateway. */
  gatewayArgs?: string[];
  /**
   * mTLS inside the mesh: a CA made for this mesh (`Mesh.ca`) and a certificate per service.
   * @default false (plaintext on loopback)
   */
  tls?: boolean;
}

/** A whole mesh of real processes against the test run's etcd and Redis. */
export interface Mesh {
  readonly etcdRoot: string;
  readonly redisPrefix: string;
  readonly filesRoot: string;
  readonly gateway: ServiceProcess;
  readonly schedulers: ServiceProcess[];
  readonly workers: ServiceProcess[];
  readonly config: ServiceProcess | undefined;
  /** The gateway's bootstrap admin key (tenant "default"). */
  readonly apiKey: string;
  /** The mesh's CA, with `tls` (issue client certificates with it). */
  readonly ca: DevCa | undefined;
  /** Starts one more worker with this id. */
  addWorker(id: string, extraArgs?: string[]): Promise<ServiceProcess>;
  /** Stops everything (SIGTERM, then SIGKILL) and removes temp files. */
  close(): Promise<void>;
}

/** Starts scheduler(s), workers, gateway (and config) as real processes. */
export async function startMesh(o: MeshOptions): Promise<Mesh> {
  const etcdRoot = `/${o.prefix}/`;
  const redisPrefix = o.prefix;
  const filesRoot = await mkdtemp(join(tmpdir(), "taskmesh-files-"));
  const cacheDir = await mkdtemp(join(tmpdir(), "taskmesh-cache-"));
  const ca = o.tls === true ? await DevCa.open(join(cacheDir, "ca")) : undefined;
  const common = ["--etcd", o.etcdEndpoint, "--etcd-root", etcdRoot];
  // With TLS: the flags of a certificate for `role`/`name`, and health checked over TLS.
  const identity = async (role: MeshRole, name: string): Promise<string[]> => {
    if (ca === undefined) return [];
    const files = await ca.issue({ role, name, hosts: ["127.0.0.1", "localhost"] });
    return ["--mesh-ca", ca.caCert, "--mesh-cert", files.cert, "--mesh-key", files.key];
  };
  const healthCa = ca !== undefined ? { healthCa: ca.caCert } : {};
  const cache = (name: string): string[] => ["--config-cache", join(cacheDir, `${name}.json`)];
  const all: ServiceProcess[] = [];
  const track = (p: ServiceProcess): ServiceProcess => {
    all.push(p);
    return p;
  };
  const addWorker = async (id: string, extraArgs: string[] = []): Promise<ServiceProcess> => {
    const w = await startService("worker", id, [
      ...common,
      ...(await identity("worker", id)),
      "--id", id,
      ...cache(id),
      "--slots", String(o.slots ?? 10),
      "--files-root", filesRoot,
      "--shutdown-grace-ms", "3000",
      ...(o.workerArgs ?? []),
      ...extraArgs,
    ], healthCa);
    return track(w);
  };
  try {
    const config =
      o.config === true ? track(await startService("config", "config", [...common, ...(await identity("config", "config"))], healthCa)) : undefined;
    const schedulers: ServiceProcess[] = [];
    for (let i = 0; i < (o.schedulers ?? 1); i++) {
      schedulers.push(
        track(
          await startService("scheduler", `scheduler-${i + 1}`, [
            ...common,
            ...(await identity("scheduler", `scheduler-${i + 1}`)),
            ...cache(`scheduler-${i + 1}`),
            "--redis", o.redisUrl,
            "--redis-prefix", redisPrefix,
            ...(o.schedulerArgs ?? []),
          ], healthCa),
        ),
      );
    }
    const workers: ServiceProcess[] = [];
    for (let i = 0; i < (o.workers ?? 2); i++) workers.push(await addWorker(`${o.prefix}-w${i + 1}`));
    const apiKey = o.apiKey ?? `tm_test_admin_${o.prefix}`;
    const gateway = track(
      await startService(
        "gateway",
        "gateway",
        [
          ...common,
          ...(await identity("gateway", "gateway")),
          ...cache("gateway"),
          "--redis", o.redisUrl,
          "--redis-prefix", redisPrefix,
          ...(o.gatewayArgs ?? []),
        ],
        { env: { TASKMESH_BOOTSTRAP_API_KEY: apiKey } },
      ),
    );
    return {
      etcdRoot,
      redisPrefix,
      filesRoot,
      gateway,
      schedulers,
      workers,
      config,
      apiKey,
      ca,
      addWorker,
      async close() {
        // Tests add processes to these lists too (a scheduler restarted, a worker added): stop all.
        const every = new Set([...all, ...schedulers, ...workers, gateway]);
        await Promise.all([...every].reverse().map((p) => p.stop()));
        await rm(filesRoot, { recursive: true, force: true });
        await rm(cacheDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await Promise.all(all.map((p) => p.kill()));
    await rm(filesRoot, { recursive: true, force: true });
    await rm(cacheDir, { recursive: true, force: true });
    throw err;
  }
}
