import { hostname } from "node:os";
import { warnIfUnreachable } from "../../lib/advertise.js";
import { createEtcd, type EtcdSecurity } from "../../lib/etcd.js";
import type { Logger } from "pino";
import { file_taskmesh_v1_worker_service, WorkerService } from "../../gen/taskmesh/v1/worker_service_pb.js";
import { WorkerConfigSchema } from "../../gen/taskmesh/v1/config_service_pb.js";
import { connectConfig, decodeConfig, workerNamespaces } from "../../lib/config-client.js";
import { etcdKeys, type WorkerRecord } from "../../lib/keys.js";
import { createRegistry, workerMetrics } from "../../lib/metrics.js";
import { Registration } from "../../lib/registration.js";
import { startServer, type RpcServer, type ServerLimits } from "../../lib/server.js";
import { MeshSecurity, type AccessPolicy } from "../../lib/mesh-security.js";
import { Shutdown, type ComponentState } from "../../lib/lifecycle.js";
import { Executor } from "./executor.js";
import { builtinHandlers, loadHandlers, type TaskHandler } from "./handlers.js";
import { WorkSession, workerRoutes } from "./work-service.js";


/** Everything a worker process needs, already parsed (main.ts reads env and flags). */
export interface WorkerOptions {
  id: string;
  /** @default "127.0.0.1" */
  host: string;
  /** 0 = any free port. */
  port: number;
  slots: number;
  etcdEndpoints: string[];
  /** TLS and user of the etcd connections (lib/etcd.ts); plaintext without auth when absent. */
  etcdSecurity?: EtcdSecurity | undefined;
  etcdRoot: string;
  /** Path of a module of user-defined handlers, or "" for none. */
  handlersPath: string;
  filesRoot: string;
  httpAllowedHosts: string[];
  queues: string[];
  labels: Record<string, string>;
  /** How long in-flight tasks may run on after SIGTERM. */
  shutdownGraceMs: number;
  /** Lease TTL of the registration. @default 5 */
  leaseTtlSeconds: number;
  heartbeatMs: number;
  /** Last-known-good configuration file; "" for none. */
  configCache: string;
  /** What other services dial (see ServerOptions.advertiseAddress); "" for the bound address. */
  advertiseAddress: string;
  /** Bounds on what one client can hold of the port (lib/server.ts ServerLimits). @default DEFAULT_SERVER_LIMITS */
  limits?: Partial<ServerLimits>;
  /** Mesh credentials: only a scheduler may open a Work stream; how to dial the config service. @default none (loopback only) */
  security?: MeshSecurity;
  version: string;
  logger: Logger;
}

/** Who may call a worker: schedulers only (a Work stream runs tasks; docs/security.md). */
export const WORKER_ACCESS: AccessPolicy = { [WorkerService.typeName]: ["scheduler"] };

/** A running worker: registered in etcd, serving WorkerService.Work, executing tasks. */
export interface Worker {
  readonly id: string;
  readonly address: string;
  readonly state: ComponentState;
  /** Graceful stop: leave the ring, finish in-flight work within the grace period, release the lease. */
  close(): Promise<void>;
}

/** Builds and starts a worker. */
export async function startWorker(opts: WorkerOptions): Promise<Worker> {
  const log = opts.logger.child({ workerId: opts.id });
  let state: ComponentState = "starting";
  const registry = createRegistry("worker");
  const metrics = workerMetrics(registry);
  const handlers = new Map<string, TaskHandler>();
  let executor: Executor | undefined;
  // Live settings: flags give the defaults, the `worker` and `worker/<id>` config namespaces
  // override them without a restart.
  let httpAllowedHosts: readonly string[] = opts.httpAllowedHosts;
  let shutdownGraceMs = opts.shutdownGraceMs;
  for (const [k, v] of builtinHandlers({
    filesRoot: opts.filesRoot,
    httpAllowedHosts: () => httpAllowedHosts,
    slots: () => ({ slots: executor?.slots ?? opts.slots, used: executor?.used ?? 0 }),
  })) {
    handlers.set(k, v);
  }
  if (opts.handlersPath !== "") {
    for (const [k, v] of await loadHandlers(opts.handlersPath)) handlers.set(k, v);
  }
  const taskTypes = [...handlers.keys()].sort();

  let session: WorkSession | undefined;
  const startedCount = new TurnCounts((type, n) => metrics.started.inc({ type }, n));
  const finishedCount = new TurnCounts((outcome, n) => metrics.finished.inc({ outcome }, n));
  executor = new Executor({
    handlers,
    slots: opts.slots,
    logger: log,
    events: {
      accepted(a) {
        startedCount.add(a.type);
        session?.events.accepted(a);
      },
      progress(id, att, pct, msg) {
        session?.events.progress(id, att, pct, msg);
      },
      log(id, att, line) {
        session?.events.log(id, att, line);
      },
      finished(id, att, outcome) {
        finishedCount.add(outcome.kind);
        session?.events.finished(id, att, outcome);
      },
    },
  });
  const ex = executor;
  metrics.observeSlots(() => ({ slots: ex.slots, used: ex.used }));
  session = new WorkSession({
    workerId: opts.id,
    executor: ex,
    taskTypes: () => taskTypes,
    logger: log,
    heartbeatMs: opts.heartbeatMs,
  });
  const work = session;

  const server: RpcServer = await startServer({
    ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
    name: "worker",
    host: opts.host,
    port: opts.port,
    routes: workerRoutes(work),
    files: [file_taskmesh_v1_worker_service],
    advertiseAddress: opts.advertiseAddress,
    mesh: { security: opts.security ?? MeshSecurity.none(), access: WORKER_ACCESS },
    registry,
    logger: log,
  });

  const etcd = createEtcd({ endpoints: opts.etcdEndpoints, logger: log, security: opts.etcdSecurity });
  const keys = etcdKeys(opts.etcdRoot);
  const started = new Date().toISOString();
  let draining = false;
  const record = (): WorkerRecord => ({
    id: opts.id,
    address: server.address,
    host: hostname(),
    pid: process.pid,
    slots: ex.slots,
    taskTypes,
    queues: opts.queues,
    labels: opts.labels,
    version: opts.version,
    started,
    draining,
  });
  const config = await connectConfig({
    ...(opts.security !== undefined ? { security: opts.security } : {}),
    etcd,
    root: opts.etcdRoot,
    namespaces: workerNamespaces(opts.id),
    labels: opts.labels,
    cacheFile: opts.configCache,
    registry,
    logger: log,
  });
  let registration: Registration | undefined;
  const applyConfig = (): void => {
    const c = decodeConfig(WorkerConfigSchema, config.client.get("worker"), config.client.get(`worker/${opts.id}`));
    const slots = c.slots ?? opts.slots;
    httpAllowedHosts = c.httpAllowedHosts ?? opts.httpAllowedHosts;
    shutdownGraceMs = c.shutdownGraceMs !== undefined ? Number(c.shutdownGraceMs) : opts.shutdownGraceMs;
    if (slots !== ex.slots) {
      ex.setSlots(slots);
      work.startBacklog();
      log.info({ slots }, "slots changed by configuration");
      // Tell the scheduler at once: the heartbeat carries slots; the registration too.
      work.nudge();
      void registration?.update().catch((err: unknown) => log.warn({ err }, "registration update failed"));
    }
  };
  applyConfig();
  config.client.on("change", applyConfig);
  try {
    registration = await Registration.create({
      client: etcd,
      key: keys.worker(opts.id),
      value: record,
      ttlSeconds: opts.leaseTtlSeconds,
      logger: log,
    });
  } catch (err) {
    await server.close();
    await config.close();
    etcd.close();
    throw err;
  }
  const reg = registration;
  warnIfUnreachable("worker", server.address, opts.etcdEndpoints, log);
  state = "running";
  log.info({ address: server.address, slots: ex.slots, taskTypes }, "worker registered");

  const shutdown = new Shutdown(log)
    .add("stop taking work", async () => {
      state = "draining";
      draining = true;
      server.setServing(false);
      await reg.update();
    })
    .add("drain in-flight tasks", () => ex.drain(shutdownGraceMs))
    .add("flush results", async () => {
      // Wait (bounded) for the scheduler to acknowledge the last results before leaving.
      await work.whenAcked(3000);
      work.close();
    })
    .add("release lease", () => reg.close())
    .add("close config", () => config.close())
    .add("close server", () => server.close())
    .add("close etcd", () => {
      etcd.close();
      state = "stopped";
    });

  return {
    id: opts.id,
    address: server.address,
    get state() {
      return state;
    },
    close: () => shutdown.shutdown(),
  };
}

/**
 * Counter increments by label value, summed over an event-loop turn and then passed on at once:
 * a labelled prom-client `inc` per task costs more than running a short task.
 */
class TurnCounts {
  private readonly counts = new Map<string, { n: number }>();
  /** The count last added to: a turn's attempts are mostly of one type and outcome. */
  private last: { label: string; c: { n: number } } | undefined;

  constructor(private readonly flush: (label: string, n: number) => void) {}

  add(label: string): void {
    const last = this.last;
    if (last !== undefined && last.label === label) {
      last.c.n++;
      return;
    }
    let c = this.counts.get(label);
    if (c === undefined) this.counts.set(label, (c = { n: 0 }));
    c.n++;
    if (last === undefined) setImmediate(() => this.pass());
    this.last = { label, c };
  }

  private pass(): void {
    this.last = undefined;
    for (const [label, c] of this.counts) this.flush(label, c.n);
    this.counts.clear();
  }
}
