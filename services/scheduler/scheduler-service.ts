import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "pino";
import {
  GetClusterStatusResponseSchema,
  ListWorkersResponseSchema,
  QueueStatsSchema,
  WorkerEvent_Type,
  WorkerEventSchema,
  WorkerInfoSchema,
  type SchedulerInfo,
  type WorkerEvent,
  type WorkerInfo,
} from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { type TaskEvent, TaskStatus } from "../../gen/taskmesh/v1/task_pb.js";
import { ListTasksResponseSchema, SubmitTasksResponseSchema } from "../../gen/taskmesh/v1/task_service_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import { ERROR_DOMAIN, invalidArgument, notFound, toConnectError } from "../../lib/errors.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { WorkerRecord } from "../../lib/keys.js";
import type { Membership } from "../../lib/membership.js";
import { LIMITS, REQUEST_ID_HEADER, TENANT_HEADER } from "../../lib/task-types.js";
import { meshPeer } from "../../lib/mesh-security.js";
import { currentTraceparent } from "../../lib/tracing.js";
import { isRequestId, requestTaskIds, toNewTask, type SubmitDefaults } from "./submit.js";
import type { DirectPlan, Work } from "./dispatcher.js";
import { QuotaExceededError, type NewTask, type SubmitResult, type TaskStore, type TenantQuota } from "./task-store.js";
import type { SchedulerMetrics } from "../../lib/metrics.js";

/** What the SchedulerService implementation needs from its replica. */
export interface SchedulerServiceDeps {
  store: TaskStore;
  workers: Membership<WorkerRecord>;
  /** Task types accepted: built-ins plus those announced by registered workers. */
  knownTypes: () => ReadonlySet<string>;
  defaults: () => SubmitDefaults;
  /** A tenant's quota (live configuration; docs/fairness.md), undefined for none. */
  quota?: (tenant: string) => TenantQuota | undefined;
  /** Called after tasks were stored, so the leader dispatches them (locally or via Redis). */
  onSubmitted: (work: Work[]) => void;
  /**
   * On the leader: plans direct claims for tasks about to be stored (the dispatcher's fast lane:
   * a worker picked and a slot reserved per task, see TaskStore.submit); `settle` gets the
   * store's answer (undefined when the call failed) and hands the claimed tasks to their
   * workers. Undefined, or a plan of undefined, for none.
   */
  planDirect?: (tasks: readonly NewTask[], now: number) => DirectPlan | undefined;
  /** Tells the leader (wherever it runs) to abort a running attempt on its worker. */
  requestCancel: (workerId: string, taskId: string, attempt: number, reason: string) => Promise<void>;
  /** Scheduler replicas and which one leads. */
  schedulers: () => Promise<SchedulerInfo[]>;
  /** Slots in use per worker as last published by the leader. */
  slotsUsed: () => Promise<Map<string, number>>;
  metrics: SchedulerMetrics;
  logger: Logger;
}

const TERMINAL = new Set([TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED]);
const TENANT = /^[A-Za-z0-9_.-]{1,100}$/;

/**
 * The task id maker of a submit that carries the gateway's request id (see requestTaskIds):
 * undefined without the header; INVALID_ARGUMENT naming it when it is not a ULID.
 */
function requestIds(ctx: HandlerContext, tenant: string): ((index: number, queue: string) => string) | undefined {
  const id = ctx.requestHeader.get(REQUEST_ID_HEADER);
  if (id === null) return undefined;
  if (!isRequestId(id)) throw invalidArgument(REQUEST_ID_HEADER, "must be a ULID (26 characters of Crockford base 32)");
  return requestTaskIds(id, tenant);
}

/**
 * The caller's tenant. A producer calling directly acts for the tenant its certificate names,
 * whatever headers it sends (one naming another tenant is refused); the gateway, an admin, or a
 * caller trusted by loopback or the service token says whose call it forwards in the tenant
 * header ("default" when absent). See docs/security.md.
 */
export function tenantOf(ctx: HandlerContext): string {
  const header = ctx.requestHeader.get(TENANT_HEADER);
  const peer = meshPeer(ctx);
  if (peer?.kind === "certificate" && peer.role === "producer") {
    if (header !== null && header !== peer.name) {
      throw new ConnectError(`producer ${peer.name} may act only for tenant ${peer.name}, not ${JSON.stringify(header)}`, Code.PermissionDenied);
    }
    if (!TENANT.test(peer.name)) throw new ConnectError(`producer certificate names no valid tenant`, Code.PermissionDenied);
    return peer.name;
  }
  const t = header ?? "default";
  if (!TENANT.test(t)) throw invalidArgument(TENANT_HEADER, "malformed tenant");
  return t;
}

function workerInfo(r: WorkerRecord, used: number): WorkerInfo {
  return create(WorkerInfoSchema, {
    id: r.id,
    address: r.address,
    slots: r.slots,
    slotsUsed: used,
    taskTypes: r.taskTypes,
    queues: r.queues,
    labels: r.labels,
    host: r.host,
    pid: r.pid,
    version: r.version,
    ...(r.started !== "" ? { startedAt: timestampFromMs(Date.parse(r.started)) } : {}),
  });
}

/**
 * RESOURCE_EXHAUSTED (HTTP 429) for a submit over a tenant's quota, with a `google.rpc.ErrorInfo`
 * of reason QUOTA_EXCEEDED saying which quota, its limit and the tenant's count.
 */
function quotaExceeded(err: QuotaExceededError): ConnectError {
  const e = new ConnectError(err.message, Code.ResourceExhausted);
  e.details.push({
    desc: ErrorInfoSchema,
    value: create(ErrorInfoSchema, {
      reason: "QUOTA_EXCEEDED",
      domain: ERROR_DOMAIN,
      metadata: { tenant: err.tenant, quota: err.quota === "queues" ? "max_queues_per_tenant" : "max_tasks_per_tenant", limit: String(err.limit), current: String(err.current) },
    }),
  });
  return e;
}

/** Builds the SchedulerService implementation; every replica serves it. */
export function schedulerService(deps: SchedulerServiceDeps): ServiceImpl<typeof SchedulerService> {
  const { store, logger } = deps;
  const log = logger.child({ component: "scheduler-service" });
  const guard = async <T>(method: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw toConnectError(err, log, { method });
    }
  };

  const submitMany = async (reqs: Parameters<typeof toNewTask>[0][], ctx: HandlerContext, batch: boolean) => {
    const tenant = tenantOf(ctx);
    const ids = requestIds(ctx, tenant);
    const now = Date.now();
    const known = deps.knownTypes();
    const defaults = deps.defaults();
    // The SubmitTask(s) span (tracingInterceptor) becomes the parent of every attempt's span.
    const traceparent = currentTraceparent();
    const tasks = reqs.map((r, i) =>
      toNewTask(r, tenant, known, defaults, now, batch ? `tasks[${i}].` : "", traceparent, ids === undefined ? undefined : (q) => ids(i, q)),
    );
    const plan = deps.planDirect?.(tasks, now);
    let stored: SubmitResult[];
    let replicated: Promise<void>;
    try {
      ({ results: stored, replicated } = await store.submitUnconfirmed(tasks, now, plan?.claims, deps.quota));
    } catch (err) {
      plan?.settle(undefined);
      if (err instanceof QuotaExceededError) throw quotaExceeded(err);
      throw err;
    }
    // Stored on the master: tasks claimed at once go to their workers, the others to the
    // dispatcher, even when their replication then fails to be confirmed (the client is told
    // UNAVAILABLE and retries; its retry finds them by idempotency key or request id).
    plan?.settle(stored);
    // Tasks not claimed directly wait for the dispatcher.
    const queued = new Map<string, Work>();
    for (let i = 0; i < tasks.length; i++) {
      const t = tasks[i] as NewTask;
      if (stored[i]?.claimed === undefined && !stored[i]?.existing) queued.set(`${t.queue}\n${t.tenant}`, { queue: t.queue, tenant: t.tenant });
    }
    if (queued.size > 0) deps.onSubmitted([...queued.values()]);
    let created = 0;
    for (const s of stored) if (!s.existing) created++;
    if (created > 0) deps.metrics.submitted.inc(created);
    await replicated;
    return stored.map((s) => s.task);
  };

  const setPaused = async (queue: string, paused: boolean) => {
    if (queue === "" || /[{}]/.test(queue)) throw invalidArgument("queue", "a queue name is required");
    await store.setPaused(queue, paused);
    if (!paused) deps.onSubmitted([{ queue }]);
    const stats = await store.stats(Date.now());
    return create(QueueStatsSchema, stats.find((q) => q.name === queue) ?? { name: queue, paused });
  };

  return {
    submitTask: (req, ctx) =>
      guard("SubmitTask", async () => {
        const [task] = await submitMany([req], ctx, false);
        if (task === undefined) throw new ConnectError("nothing stored", Code.Internal);
        return task;
      }),

    submitTasks: (req, ctx) =>
      guard("SubmitTasks", async () => {
        if (req.tasks.length === 0) throw invalidArgument("tasks", "must not be empty");
        if (req.tasks.length > LIMITS.maxBatch) {
          throw invalidArgument("tasks", `at most ${LIMITS.maxBatch} tasks per call, got ${req.tasks.length}`);
        }
        const tasks = await submitMany(req.tasks, ctx, true);
        return create(SubmitTasksResponseSchema, { tasks });
      }),

    getTask: (req, ctx) =>
      guard("GetTask", async () => {
        const tenant = tenantOf(ctx);
        if (req.taskId === "") throw invalidArgument("task_id", "is required");
        const task = await store.get(req.taskId);
        if (task === undefined || task.tenant !== tenant) throw notFound("task", req.taskId);
        return task;
      }),

    listTasks: (req, ctx) =>
      guard("ListTasks", async () => {
        const tenant = tenantOf(ctx);
        if (req.pageSize < 0) throw invalidArgument("page_size", "must not be negative");
        const pageSize = Math.min(req.pageSize === 0 ? 50 : req.pageSize, 1000);
        let label: [string, string] | undefined;
        if (req.label !== "") {
          const eq = req.label.indexOf("=");
          if (eq <= 0) throw invalidArgument("label", 'must look like "key=value"');
          label = [req.label.slice(0, eq), req.label.slice(eq + 1)];
        }
        if (!(req.status in TaskStatus)) throw invalidArgument("status", `unknown value ${req.status}`);
        const filter = {
          ...(req.status !== TaskStatus.UNSPECIFIED ? { status: req.status } : {}),
          ...(req.type !== "" ? { type: req.type } : {}),
          ...(req.queue !== "" ? { queue: req.queue } : {}),
          ...(label !== undefined ? { label } : {}),
        };
        let page;
        try {
          page = await store.list(tenant, filter, pageSize, req.pageToken);
        } catch (err) {
          if (err instanceof RangeError) throw invalidArgument("page_token", "malformed");
          throw err;
        }
        return create(ListTasksResponseSchema, { tasks: page.tasks, nextPageToken: page.nextPageToken });
      }),

    cancelTask: (req, ctx) =>
      guard("CancelTask", async () => {
        const tenant = tenantOf(ctx);
        if (req.taskId === "") throw invalidArgument("task_id", "is required");
        const reason = req.reason === "" ? "cancelled by request" : req.reason.slice(0, 500);
        const r = await store.cancel(tenant, req.taskId, reason, Date.now());
        if (r === undefined) throw notFound("task", req.taskId);
        if (r.running !== undefined) {
          await deps.requestCancel(r.running.workerId, req.taskId, r.running.attempt, reason);
        }
        return r.task;
      }),

    retryTask: (req, ctx) =>
      guard("RetryTask", async () => {
        const tenant = tenantOf(ctx);
        if (req.taskId === "") throw invalidArgument("task_id", "is required");
        const r = await store.retry(tenant, req.taskId, Date.now());
        if ("error" in r) {
          if (r.error === "not_found") throw notFound("task", req.taskId);
          throw new ConnectError("only FAILED or CANCELLED tasks can be retried", Code.FailedPrecondition);
        }
        deps.onSubmitted([{ queue: r.task.queue, tenant: r.task.tenant }]);
        return r.task;
      }),

    async *watchTask(req, ctx) {
      const tenant = tenantOf(ctx);
      if (req.taskId === "") throw invalidArgument("task_id", "is required");
      const task = await guard("WatchTask", () => store.get(req.taskId));
      if (task === undefined || task.tenant !== tenant) throw notFound("task", req.taskId);
      let wake: (() => void) | undefined;
      let signalled = false;
      // Subscribe before reading history so no event falls between the two.
      const unsubscribe = store.onEvent(req.taskId, () => {
        signalled = true;
        wake?.();
      });
      const onAbort = (): void => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        let last = 0;
        for (;;) {
          signalled = false;
          const events: TaskEvent[] = await guard("WatchTask", () => store.events(req.taskId, last));
          let done = false;
          for (const ev of events) {
            last = Number(ev.sequence);
            yield ev;
            done = ev.task !== undefined && TERMINAL.has(ev.task.status);
          }
          if (done) return;
          if (events.length === 0) {
            // The task may have expired meanwhile.
            const still = await guard("WatchTask", () => store.get(req.taskId));
            if (still === undefined) throw notFound("task", req.taskId);
          }
          if (ctx.signal.aborted) return;
          if (!signalled) {
            // Pub/sub wakes us; the timer is a safety net for a lost notification.
            await new Promise<void>((resolve) => {
              const t = setTimeout(resolve, 1000);
              t.unref();
              wake = () => {
                clearTimeout(t);
                resolve();
              };
            });
            wake = undefined;
          }
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },

    listWorkers: () =>
      guard("ListWorkers", async () => {
        const used = await deps.slotsUsed();
        const workers = [...deps.workers.snapshot().values()].map((r) => workerInfo(r, used.get(r.id) ?? 0));
        return create(ListWorkersResponseSchema, { workers });
      }),

    getClusterStatus: () =>
      guard("GetClusterStatus", async () => {
        const now = Date.now();
        const [used, schedulers, stats] = await Promise.all([deps.slotsUsed(), deps.schedulers(), store.stats(now)]);
        const workers = [...deps.workers.snapshot().values()].map((r) => workerInfo(r, used.get(r.id) ?? 0));
        return create(GetClusterStatusResponseSchema, {
          schedulers,
          workers,
          queues: stats.map((q) => create(QueueStatsSchema, q)),
        });
      }),

    pauseQueue: (req) => guard("PauseQueue", () => setPaused(req.queue, true)),
    resumeQueue: (req) => guard("ResumeQueue", () => setPaused(req.queue, false)),

    async *watchWorkers(_req, ctx) {
      const out = new AsyncQueue<WorkerEvent>();
      const used = await deps.slotsUsed();
      const onPut = (_id: string, r: WorkerRecord): void =>
        out.push(create(WorkerEventSchema, { type: WorkerEvent_Type.PUT, worker: workerInfo(r, used.get(r.id) ?? 0) }));
      const onDelete = (_id: string, r: WorkerRecord): void =>
        out.push(create(WorkerEventSchema, { type: WorkerEvent_Type.DELETE, worker: workerInfo(r, 0) }));
      for (const r of deps.workers.snapshot().values()) onPut(r.id, r);
      deps.workers.on("put", onPut);
      deps.workers.on("delete", onDelete);
      const onAbort = (): void => out.end();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        yield* out;
      } finally {
        deps.workers.off("put", onPut);
        deps.workers.off("delete", onDelete);
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
  };
}

/** Registers the SchedulerService on a router. */
export function schedulerRoutes(deps: SchedulerServiceDeps): (router: ConnectRouter) => void {
  const impl = schedulerService(deps);
  return (router) => router.service(SchedulerService, impl);
}

