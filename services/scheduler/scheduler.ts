import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { warnIfUnreachable } from "../../lib/advertise.js";
import { createEtcd, type EtcdSecurity } from "../../lib/etcd.js";
import { DEFAULT_REDIS_COMMAND_TIMEOUT_MS, createRedis, type RedisTls } from "../../lib/redis.js";
import type { Logger } from "pino";
import { SchedulerInfoSchema } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { SchedulerConfigSchema } from "../../gen/taskmesh/v1/config_service_pb.js";
import { connectConfig, decodeConfig } from "../../lib/config-client.js";
import { file_taskmesh_v1_schedule_service, ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { file_taskmesh_v1_scheduler_service, SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import {
  etcdKeys,
  parseServiceRecord,
  parseWorkerRecord,
  type ServiceRecord,
  type WorkerRecord,
} from "../../lib/keys.js";
import { Shutdown, delay, type ComponentState } from "../../lib/lifecycle.js";
import { Membership } from "../../lib/membership.js";
import { createRegistry, queueMetrics, schedulerMetrics } from "../../lib/metrics.js";
import { Registration } from "../../lib/registration.js";
import { startServer, type ServerLimits } from "../../lib/server.js";
import { MeshSecurity, type AccessPolicy } from "../../lib/mesh-security.js";
import { BUILTIN_TASK_TYPES } from "../../lib/task-types.js";
import { Dispatcher, type Work } from "./dispatcher.js";
import { Leadership } from "./leadership.js";
import { Ring } from "./ring.js";

import { scheduleRoutes } from "./schedule-service.js";
import { ScheduleStore, ScheduleTicker } from "./schedules.js";
import { schedulerRoutes } from "./scheduler-service.js";
import { DEFAULT_SUBMIT, type SubmitDefaults } from "./submit.js";
import { FencedError, TaskStore, type LeaderStamp, type TenantQuota } from "./task-store.js";
import { WorkerSession } from "./worker-session.js";

/** Everything a scheduler replica needs, already parsed (main.ts reads env and flags). */
export interface SchedulerOptions {
  /** @default random */
  id?: string;
  host: string;
  port: number;
  etcdEndpoints: string[];
  /** TLS and user of the etcd connections (lib/etcd.ts); plaintext without auth when absent. */
  etcdSecurity?: EtcdSecurity | undefined;
  etcdRoot: string;
  /** The `--redis` setting: `redis://`, `rediss://`, `redis-sentinel://` or `rediss-sentinel://` (lib/redis.ts). */
  redisUrl: string;
  /** TLS files of the Redis connections (lib/redis.ts; `rediss://` and `rediss-sentinel://` URLs). */
  redisTls?: RedisTls | undefined;
  /** Prefix of every Redis key. @default "tm" */
  redisPrefix: string;
  /**
   * Replicas that must acknowledge a submit before it returns (Redis WAIT; TaskStoreOptions
   * waitReplicas). @default 0
   */
  redisWaitReplicas?: number;
  /** How long a submit waits for them, in ms. @default 1000 */
  redisWaitTimeoutMs?: number;
  /** Lease of a running attempt without heartbeats. */
  taskLeaseMs: number;
  /** Milliseconds of waiting worth one priority level. */
  agingMsPerLevel: number;
  /** TTL of the leader's campaign lease, in seconds. */
  electionTtlSeconds: number;
  /** Instance labels (gray releases of configuration target them). */
  labels: Record<string, string>;
  /** Last-known-good configuration file; "" for none. */
  configCache: string;
  /** What other services dial (see ServerOptions.advertiseAddress); "" for the bound address. */
  advertiseAddress: string;
  /** Bounds on what one client can hold of the port (lib/server.ts ServerLimits). @default DEFAULT_SERVER_LIMITS */
  limits?: Partial<ServerLimits>;
  /** Mesh credentials: who may call this replica, and how it dials workers and the config service. @default none (loopback only) */
  security?: MeshSecurity;
  version: string;
  logger: Logger;
}

/**
 * Who may call a scheduler replica (docs/security.md): the gateway and admins anything; a trusted
 * producer, calling directly, its own tenant's tasks and schedules; nobody else.
 */
export const SCHEDULER_ACCESS: AccessPolicy = {
  [SchedulerService.typeName]: ["gateway", "admin"],
  ...Object.fromEntries(
    ["SubmitTask", "SubmitTasks", "GetTask", "ListTasks", "CancelTask", "WatchTask", "RetryTask"].map((m) => [
      `/${SchedulerService.typeName}/${m}`,
      ["gateway", "admin", "producer"] as const,
    ]),
  ),
  [ScheduleService.typeName]: ["gateway", "admin", "producer"],
};

/** A running scheduler replica. */
export interface Scheduler {
  readonly id: string;
  readonly address: string;
  readonly state: ComponentState;
  readonly isLeader: boolean;
  close(): Promise<void>;
}

/**
 * Quotas per tenant when the `scheduler` config namespace sets none (docs/fairness.md): unfinished
 * tasks in at most 1,000 queues, at most 1,000,000 unfinished tasks.
 */
export const DEFAULT_TENANT_QUOTA: TenantQuota = { maxQueues: 1000, maxTasks: 1_000_000 };

/** The live quotas: `base` for every tenant but those `tenants` names. */
interface Quotas {
  base: TenantQuota;
  tenants: ReadonlyMap<string, TenantQuota>;
}

type Control =
  /** New work: queues, and `n[i]` the tenant of the tasks in `q[i]` ("" or absent: unknown). */
  | { t: "wake"; q: string[]; n?: string[] }
  | { t: "cancel"; w: string; id: string; a: number; r: string };

/** Builds and starts a scheduler replica: serves reads and writes, campaigns to lead dispatch. */
export async function startScheduler(opts: SchedulerOptions): Promise<Scheduler> {
  const id = opts.id ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const log = opts.logger.child({ schedulerId: id });
  let state: ComponentState = "starting";
  const security = opts.security ?? MeshSecurity.none();
  const registry = createRegistry("scheduler");
  const metrics = schedulerMetrics(registry);
  const keys = etcdKeys(opts.etcdRoot);
  const prefix = opts.redisPrefix;

  // No auto-pipelining: ioredis keeps one auto-pipeline in flight per connection, so a claim
  // made while a batch of results is being recorded would not even be sent until that reply came
  // back. Commands still go out back to back without waiting for replies (the protocol pipelines
  // by itself); measured: batched enqueue 21k → 29k/s, 50-slot drain 14.0k → 15.9k/s.
  // With --redis-wait-replicas the store sends submits, and their WAIT, on a connection of their
  // own (TaskStoreOptions.waitReplicas): a WAIT never holds this one up.
  const redis = createRedis(opts.redisUrl, {
    maxRetriesPerRequest: 3,
    enableAutoPipelining: false,
    commandTimeout: DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  }, opts.redisTls);
  const sub = redis.duplicate();
  const store = new TaskStore({
    redis,
    prefix,
    agingMsPerLevel: opts.agingMsPerLevel,
    onRedisCall: (op, seconds) => metrics.redisCallSeconds.observe({ op }, seconds),
    waitReplicas: opts.redisWaitReplicas,
    waitTimeoutMs: opts.redisWaitTimeoutMs,
    logger: log,
  });
  const schedules = new ScheduleStore({ redis, prefix, logger: log });
  const etcd = createEtcd({ endpoints: opts.etcdEndpoints, logger: log, security: opts.etcdSecurity });
  // Live settings: flags give the defaults, the `scheduler` config namespace overrides them.
  let defaults: SubmitDefaults = DEFAULT_SUBMIT;
  let leaseMs = opts.taskLeaseMs;
  let quotas: Quotas = { base: DEFAULT_TENANT_QUOTA, tenants: new Map() };
  const config = await connectConfig({
    security,
    etcd,
    root: opts.etcdRoot,
    namespaces: ["scheduler"],
    labels: opts.labels,
    cacheFile: opts.configCache,
    registry,
    logger: log,
  });
  const applyConfig = (): void => {
    const c = decodeConfig(SchedulerConfigSchema, config.client.get("scheduler"));
    const ms = (v: bigint | undefined, d: number): number => (v === undefined ? d : Number(v));
    defaults = {
      maxAttempts: c.defaultMaxAttempts ?? DEFAULT_SUBMIT.maxAttempts,
      backoff: {
        initialMs: ms(c.defaultBackoffInitialMs, DEFAULT_SUBMIT.backoff.initialMs),
        maxMs: ms(c.defaultBackoffMaxMs, DEFAULT_SUBMIT.backoff.maxMs),
        multiplier: c.defaultBackoffMultiplier ?? DEFAULT_SUBMIT.backoff.multiplier,
        jitter: c.defaultBackoffJitter ?? DEFAULT_SUBMIT.backoff.jitter,
      },
      timeoutMs: DEFAULT_SUBMIT.timeoutMs,
      resultTtlMs: ms(c.defaultResultTtlMs, DEFAULT_SUBMIT.resultTtlMs),
      maxPayloadBytes: ms(c.maxPayloadBytes, DEFAULT_SUBMIT.maxPayloadBytes),
    };
    leaseMs = ms(c.taskLeaseMs, opts.taskLeaseMs);
    quotas = {
      base: {
        maxQueues: c.maxQueuesPerTenant ?? DEFAULT_TENANT_QUOTA.maxQueues,
        maxTasks: ms(c.maxTasksPerTenant, DEFAULT_TENANT_QUOTA.maxTasks),
      },
      tenants: new Map(Object.entries(c.tenantQuotas ?? {}).map(([t, q]) => [t, { maxQueues: q.maxQueues, maxTasks: Number(q.maxTasks) }])),
    };
    store.setAgingMsPerLevel(ms(c.agingMsPerLevel, opts.agingMsPerLevel));
    log.info({ defaults, leaseMs, quota: quotas.base, tenantQuotas: quotas.tenants.size }, "configuration applied");
  };
  applyConfig();
  config.client.on("change", applyConfig);
  const scheduleTicker = new ScheduleTicker({ schedules, tasks: store, defaults: () => defaults, logger: log });
  queueMetrics(registry, async () =>
    (await store.stats(Date.now())).map((q) => ({
      name: q.name,
      queued: q.queued,
      running: q.running,
      delayed: q.delayed,
      retryWait: q.retryWait,
      dead: q.dead,
      oldestQueuedAgeMs: q.oldestQueuedAge === undefined ? 0 : Number(q.oldestQueuedAge.seconds) * 1000 + q.oldestQueuedAge.nanos / 1e6,
      paused: q.paused,
    })),
  );

  const workers = new Membership<WorkerRecord>({
    client: etcd,
    prefix: keys.workers,
    parse: parseWorkerRecord,
    logger: log,
  });
  const schedulers = new Membership<ServiceRecord>({
    client: etcd,
    prefix: keys.services("scheduler"),
    parse: parseServiceRecord,
    logger: log,
  });
  await Promise.all([workers.start(), schedulers.start()]);

  let knownTypes: ReadonlySet<string> = new Set(BUILTIN_TASK_TYPES);
  const refreshTypes = (): void => {
    const s = new Set(BUILTIN_TASK_TYPES);
    for (const w of workers.snapshot().values()) for (const t of w.taskTypes) s.add(t);
    knownTypes = s;
  };
  refreshTypes();
  workers.on("put", refreshTypes);
  workers.on("delete", refreshTypes);

  // --- leader-only state -------------------------------------------------------------------
  const ring = new Ring();
  const sessions = new Map<string, WorkerSession>();
  const leadership = new Leadership({
    client: etcd,
    root: keys.root,
    ttlSeconds: opts.electionTtlSeconds,
    logger: log,
  });
  // Redis refused a leader-only write (lib.lua fence). A later leader has fenced the queue: give
  // the candidacy up. The write only came after this leadership's `until`: it changed nothing and
  // nothing says another leader exists; the leadership pauses by itself while etcd has not
  // confirmed its lease and resumes with the same epoch if etcd does (an etcd election, say).
  // Giving the candidacy up there would revoke a lease that etcd may still renew and force an
  // election, where the next leader's writes meet the same late confirmations.
  let lateLoggedAt = 0;
  const onFenced = (err: FencedError): void => {
    if (epoch === 0n) return;
    if (err.late) {
      if (Date.now() - lateLoggedAt >= 1000) {
        lateLoggedAt = Date.now();
        log.warn(
          { epoch: String(epoch), validForMs: leadership.validUntil - Date.now() },
          "Redis refused a leader-only write that reached it after this leadership was known to hold; not deposed, the write changed nothing",
        );
      }
      return;
    }
    log.warn({ epoch: String(epoch), newerEpoch: String(err.newerEpoch) }, "a later leader took over; stepping down");
    leadership.abdicate("Redis refused a write of this leader's epoch");
  };
  const dispatcher = new Dispatcher({ store, ring, sessions, leaseMs: () => leaseMs, metrics, logger: log, onFenced });
  /** The epoch of the leadership being exercised; 0 while not leading. */
  let epoch = 0n;
  /** What this replica's leader-only writes carry: Redis refuses them once stale (lib.lua fence). */
  const stamp = (): LeaderStamp => ({ epoch, until: leadership.validUntil });
  /** Bumped on every election and step-down: a take-over that awaited checks it is still current. */
  let term = 0;

  const syncRing = (s: WorkerSession): void => {
    if (sessions.get(s.id) === s && s.state === "ready" && !s.record.draining && !s.retired) ring.add(s.id, s.types);
    else if (sessions.get(s.id) === s || sessions.get(s.id) === undefined) ring.remove(s.id);
    metrics.workers.set([...sessions.values()].filter((x) => x.state === "ready").length);
  };
  const openSession = (record: WorkerRecord): void => {
    const existing = sessions.get(record.id);
    if (existing !== undefined) {
      if (existing.record.address === record.address) {
        existing.update(record);
        syncRing(existing);
        return;
      }
      sessions.delete(record.id);
      ring.remove(record.id);
      void existing.close(true);
    }
    const s = new WorkerSession({
      security,
      record,
      epoch,
      store,
      leaseMs: () => leaseMs,
      logger: log,
      onCapacity: () => dispatcher.kick(),
      metrics,
      onStateChange: syncRing,
      leader: stamp,
      onFenced,
    });
    sessions.set(record.id, s);
  };
  const onWorkerPut = (_id: string, r: WorkerRecord): void => {
    if (epoch !== 0n) openSession(r);
  };
  const onWorkerDelete = (wid: string): void => {
    const s = sessions.get(wid);
    if (s === undefined) return;
    if (s.alive) {
      // Its registration expired (the worker lost etcd), but it answers on its stream: it is
      // alive. It finishes what it runs (re-running that elsewhere would run it twice) and gets
      // nothing new until it registers again; if the stream breaks, its attempts are re-queued.
      log.warn({ workerId: wid, inflight: s.inflight.size }, "worker's registration is gone but its stream is alive; no new tasks for it");
      s.retire();
      return;
    }
    sessions.delete(wid);
    ring.remove(wid);
    log.info({ workerId: wid, inflight: s.inflight.size }, "worker left, re-queueing its tasks");
    metrics.requeued.inc({ reason: "worker_left" }, s.inflight.size);
    void s.close(true);
  };
  workers.on("put", onWorkerPut);
  workers.on("delete", onWorkerDelete);

  // Maintenance: due delayed tasks, expired leases, expired results, published slot usage.
  let maintenance: NodeJS.Timeout | undefined;
  let tick = 0;
  let maintaining = false;
  const maintain = async (): Promise<void> => {
    if (maintaining || !leadership.isLeader || epoch === 0n) return;
    maintaining = true;
    const leading = stamp();
    try {
      const now = Date.now();
      tick++;
      // Only the queues the indexes name (lib.lua): the cost follows the queues with work, not
      // every queue there is.
      const [dueQueues, leaseQueues, reapQueues] = await Promise.all([
        store.dueQueues("due", now, 1000),
        store.dueQueues("lease", now, 1000),
        tick % 10 === 0 ? store.dueQueues("reap", now, 1000) : Promise.resolve([]),
      ]);
      let promoted = 0;
      // The lanes (queue and tenant) that got QUEUED tasks; a tenant unknown for re-queued attempts.
      const woken = new Map<string, Work>();
      const wake = (queue: string, tenant?: string): void => void woken.set(`${queue}\n${tenant ?? ""}`, { queue, tenant });
      // All at once: the calls share one pipelined connection.
      const counts = await Promise.all([
        ...dueQueues.map(async (q) => {
          const tenants = new Set<string>();
          const n = await store.promoteDue(q, now, 1000, tenants);
          for (const t of tenants) wake(q, t);
          return n;
        }),
        ...leaseQueues.map(async (q) => {
          const expired = await store.expireLeases(q, now, 1000, leading);
          if (expired.length > 0) {
            wake(q);
            metrics.requeued.inc({ reason: "lease_expired" }, expired.length);
            log.warn({ queue: q, count: expired.length }, "re-queued attempts whose lease expired");
            for (const e of expired) for (const s of sessions.values()) if (s.leaseExpired(e.id, e.attempt)) break;
          }
          return expired.length;
        }),
        ...reapQueues.map(async (q) => {
          const { removed } = await store.reapExpired(q, now, 1000);
          if (removed) log.debug({ queue: q }, "queue left empty: removed");
          return 0;
        }),
      ]);
      for (const n of counts) promoted += n;
      try {
        const fired = await scheduleTicker.tick(now);
        if (fired.created > 0) {
          metrics.submitted.inc(fired.created);
          promoted += fired.created;
          for (const w of fired.lanes.values()) wake(w.queue, w.tenant);
        }
      } catch (err) {
        log.error({ err }, "schedule tick failed");
      }
      if (promoted > 0) dispatcher.kick(woken.values());
      // A retired worker (registration gone, stream alive) is let go once it runs nothing.
      for (const s of [...sessions.values()]) {
        if (s.retired && s.inflight.size === 0) {
          sessions.delete(s.id);
          ring.remove(s.id);
          log.info({ workerId: s.id }, "unregistered worker finished its tasks; closing its stream");
          void s.close(false);
        }
      }
      if (tick % 5 === 0) {
        const used: string[] = [];
        for (const s of sessions.values()) used.push(s.id, String(s.inflight.size));
        const k = `${prefix}:wstat`;
        const m = redis.multi().del(k);
        if (used.length > 0) m.hset(k, ...used).pexpire(k, 10_000);
        await m.exec();
      }
    } catch (err) {
      if (err instanceof FencedError) onFenced(err);
      else log.error({ err }, "maintenance failed");
    } finally {
      maintaining = false;
    }
  };

  /**
   * Takes the leadership of epoch `e` up: first fences every queue with it and restarts the
   * running attempts' leases (TaskStore.lead), so that from then on Redis refuses the claims,
   * re-queues and lease expiries of any older leader still running, and no attempt's lease runs
   * out while its worker is still finding the new leader; then opens the workers' streams,
   * dispatches and keeps the queues.
   */
  const takeOver = async (e: bigint): Promise<void> => {
    const mine = ++term;
    // Leading again after a pause (Leadership): let the pause's step-down finish first.
    await steppingDown;
    if (term !== mine) return;
    steppingDown = undefined;
    for (let backoff = 100; ; backoff = Math.min(backoff * 2, 2000)) {
      try {
        const restarted = await store.lead(await store.queues(), { epoch: e, until: leadership.validUntil }, Date.now(), leaseMs);
        log.info({ epoch: String(e), leasesRestarted: restarted }, "queues fenced for the new leadership");
        break;
      } catch (err) {
        if (err instanceof FencedError && !err.late) {
          log.warn({ epoch: String(e), newerEpoch: String(err.newerEpoch) }, "a later leader already took the queues over");
          leadership.abdicate("Redis holds a later leader's epoch");
          return;
        }
        if (term !== mine) return;
        // Late (FencedError.late: the lease not confirmed in time; the leadership pauses, which
        // ends this term, or goes on) or Redis out of reach: try again.
        log.warn({ err }, "could not fence the queues; retrying");
        await delay(backoff);
        if (term !== mine) return;
      }
    }
    if (term !== mine) return;
    epoch = e;
    metrics.leader.set(1);
    for (const r of workers.snapshot().values()) openSession(r);
    dispatcher.start(stamp);
    maintenance = setInterval(() => void maintain(), 100);
    maintenance.unref();
  };
  leadership.on("elected", (e) => {
    takeOver(e).catch((err: unknown) => {
      log.error({ err }, "taking the leadership up failed; stepping down");
      leadership.abdicate("take-over failed");
    });
  });
  // One step-down per term, however many paths ask for it (lost leadership, shutdown).
  let steppingDown: Promise<void> | undefined;
  const stepDown = (): Promise<void> => (steppingDown ??= leaveLeadership());
  const leaveLeadership = async (): Promise<void> => {
    term++;
    epoch = 0n;
    metrics.leader.set(0);
    if (maintenance !== undefined) clearInterval(maintenance);
    maintenance = undefined;
    await dispatcher.stop();
    const all = [...sessions.values()];
    sessions.clear();
    for (const s of all) ring.remove(s.id);
    // Leave running attempts RUNNING: the next leader adopts them from the workers' hellos.
    await Promise.all(all.map((s) => s.close(false)));
  };
  leadership.on("lost", () => void stepDown());

  // --- control channel: from every replica to the leader ------------------------------------
  const ctlChannel = `${prefix}:ctl`;
  const handleControl = (c: Control): void => {
    if (!leadership.isLeader) return;
    switch (c.t) {
      case "wake":
        dispatcher.kick(c.q.map((queue, i) => ({ queue, tenant: c.n?.[i] || undefined })));
        break;
      case "cancel":
        sessions.get(c.w)?.cancel(c.id, c.a, c.r);
        break;
    }
  };
  await sub.subscribe(ctlChannel);
  sub.on("message", (channel: string, message: string) => {
    if (channel !== ctlChannel) return;
    try {
      handleControl(JSON.parse(message) as Control);
    } catch (err) {
      log.warn({ err }, "bad control message");
    }
  });
  const control = async (c: Control): Promise<void> => {
    if (leadership.isLeader) handleControl(c);
    else await redis.publish(ctlChannel, JSON.stringify(c));
  };

  const serviceRoutes = schedulerRoutes({
    store,
    workers,
    knownTypes: () => knownTypes,
    defaults: () => defaults,
    quota: (tenant) => quotas.tenants.get(tenant) ?? quotas.base,
    // The leader hands new tasks to workers in the submit call when nothing waits before them.
    planDirect: (tasks, now) => (leadership.isLeader ? dispatcher.planDirect(tasks, now) : undefined),
    onSubmitted: (work) =>
      void control({ t: "wake", q: work.map((w) => w.queue), n: work.map((w) => w.tenant ?? "") }).catch((err: unknown) =>
        log.warn({ err }, "wake failed"),
      ),
    requestCancel: (w, taskId, attempt, reason) => control({ t: "cancel", w, id: taskId, a: attempt, r: reason }),
    schedulers: async () => {
        const leader = await leadership.leader().catch(() => undefined);
        return [...schedulers.snapshot().values()].map((s) =>
          create(SchedulerInfoSchema, { id: s.id, address: s.address, leader: s.address === leader }),
        );
      },
    slotsUsed: async () => {
        const h = await redis.hgetall(`${prefix}:wstat`);
        return new Map(Object.entries(h).map(([k, v]) => [k, Number(v)]));
      },
    metrics,
    logger: log,
  });
  const server = await startServer({
    ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
    name: "scheduler",
    host: opts.host,
    port: opts.port,
    routes: (router) => {
      serviceRoutes(router);
      scheduleRoutes({ schedules, knownTypes: () => knownTypes, defaults: () => defaults, logger: log })(router);
    },
    files: [file_taskmesh_v1_scheduler_service, file_taskmesh_v1_schedule_service],
    mesh: { security, access: SCHEDULER_ACCESS },
    advertiseAddress: opts.advertiseAddress,
    registry,
    logger: log,
  });

  const registration = await Registration.create({
    client: etcd,
    key: keys.service("scheduler", id),
    value: () => ({
      id,
      address: server.address,
      host: hostname(),
      pid: process.pid,
      version: opts.version,
      started: new Date().toISOString(),
    }),
    ttlSeconds: 5,
    logger: log,
  });
  warnIfUnreachable("scheduler", server.address, opts.etcdEndpoints, log);
  leadership.start(server.address);
  state = "running";
  log.info({ address: server.address }, "scheduler started");

  const shutdown = new Shutdown(log)
    .add("stop serving", () => {
      state = "draining";
      server.setServing(false);
    })
    .add("resign leadership", async () => {
      await leadership.close();
      await stepDown();
    })
    .add("close server", () => server.close())
    .add("release registration", () => registration.close())
    .add("close watches", async () => {
      await workers.close();
      await schedulers.close();
    })
    .add("close clients", async () => {
      await config.close();
      await store.close();
      sub.disconnect();
      redis.disconnect();
      etcd.close();
      state = "stopped";
    });

  return {
    id,
    address: server.address,
    get state() {
      return state;
    },
    get isLeader() {
      return leadership.isLeader;
    },
    close: () => shutdown.shutdown(),
  };
}
