import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from "prom-client";

/**
 * Every metric name taskmesh exports, in one place so dashboards, alerts and code agree. Add new
 * metrics here (name, then a constructor below) rather than inline in a component.
 */
export const METRIC_NAMES = {
  /** Counter `{service, method, code}`: RPCs finished, by gRPC status code name. */
  rpcRequests: "taskmesh_rpc_requests_total",
  /** Histogram `{service, method}`: seconds from receiving a call until it ends (see {@link rpcMetricsInterceptor}). */
  rpcDuration: "taskmesh_rpc_duration_seconds",
  /** Gauge `{service, method}`: calls in progress (open streams included). */
  rpcInFlight: "taskmesh_rpc_in_flight",
  /** Counter `{type}`: attempts a worker started. */
  workerTasksStarted: "taskmesh_worker_tasks_started_total",
  /** Counter `{outcome}`: attempts a worker finished (succeeded, failed, cancelled). */
  workerTasksFinished: "taskmesh_worker_tasks_finished_total",
  /** Gauges: a worker's configured slots and slots in use. */
  workerSlots: "taskmesh_worker_slots",
  workerSlotsUsed: "taskmesh_worker_slots_used",
  /** Counter: tasks stored by a scheduler replica. */
  tasksSubmitted: "taskmesh_tasks_submitted_total",
  /** Counter `{queue}`: attempts the leader sent to workers. */
  tasksDispatched: "taskmesh_tasks_dispatched_total",
  /** Counter `{reason}`: running attempts given back to their queue. */
  tasksRequeued: "taskmesh_tasks_requeued_total",
  /** Gauge: 1 while the replica leads. */
  schedulerLeader: "taskmesh_scheduler_leader",
  /** Gauge `{queue, status}`: tasks per queue and status (queued, running, delayed, retry_wait, dead). */
  queueTasks: "taskmesh_queue_tasks",
  /** Gauge `{queue}`: age of the oldest queued task in seconds (0 when none): the autoscaling signal. */
  queueOldestAge: "taskmesh_queue_oldest_queued_age_seconds",
  /** Gauge `{queue}`: 1 while the queue is paused. */
  queuePaused: "taskmesh_queue_paused",
  /** Gauge `{upstream, replica}`: 1 while the gateway's circuit breaker to that replica is open. */
  gatewayBreakerOpen: "taskmesh_gateway_breaker_open",
  /** Counter `{type, outcome}`: attempts the leader saw end (succeeded, failed, cancelled). */
  taskAttemptsFinished: "taskmesh_task_attempts_finished_total",
  /** Histogram `{type}`: seconds from dispatch to the attempt's result, at the leader. */
  taskRunSeconds: "taskmesh_task_run_seconds",
  /** Histogram `{queue}`: seconds a task waited ready before it was dispatched. */
  taskQueueWaitSeconds: "taskmesh_task_queue_wait_seconds",
  /** Histogram `{op}`: seconds per Redis script call of the task store. */
  redisCallSeconds: "taskmesh_redis_call_seconds",
  /** Histogram `{op}`: seconds per etcd call of the config store. */
  etcdCallSeconds: "taskmesh_etcd_call_seconds",
  /** Gauge: workers with a ready stream to the leader. */
  schedulerWorkers: "taskmesh_scheduler_workers",
  /** Gauge `{namespace}`: revision of the configuration a service applies (lib/config-client.ts). */
  configAppliedRevision: "taskmesh_config_applied_revision",
  /** Gauge: 1 while a service's config client follows a config service live, 0 on its last-known config. */
  configClientConnected: "taskmesh_config_client_connected",
} as const;

/** Buckets for RPC latency, from 1 ms to 10 s. Streams that outlive 10 s land in `+Inf`. */
export const RPC_DURATION_BUCKETS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/**
 * Creates the process's dedicated prom-client registry: Node default metrics (CPU, memory, event
 * loop, GC) plus a `service` label on every series, so one Prometheus can scrape the whole mesh.
 * A dedicated registry (not prom-client's global one) keeps tests and in-process meshes apart.
 */
export function createRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * Returns the metric already registered under `name`, or registers the one `make` builds. Two
 * servers sharing a registry (tests, an in-process mesh) then share the series instead of
 * throwing on a duplicate name.
 */
export function getOrCreate<M extends Metric>(registry: Registry, name: string, make: () => M): M {
  // The cast is safe: each name is only ever created by one constructor in this module.
  return (registry.getSingleMetric(name) as M | undefined) ?? make();
}

/** The RPC RED metrics of one registry. */
export interface RpcMetrics {
  /** {@link METRIC_NAMES.rpcRequests} */
  readonly requests: Counter<"service" | "method" | "code">;
  /** {@link METRIC_NAMES.rpcDuration} */
  readonly duration: Histogram<"service" | "method">;
  /** {@link METRIC_NAMES.rpcInFlight} */
  readonly inFlight: Gauge<"service" | "method">;
}

/** Creates (or finds) the RPC metrics in `registry`. */
export function rpcMetrics(registry: Registry): RpcMetrics {
  const registers = [registry];
  return {
    requests: getOrCreate(
      registry,
      METRIC_NAMES.rpcRequests,
      () =>
        new Counter({
          name: METRIC_NAMES.rpcRequests,
          help: "RPCs served, by taskmesh service, full RPC method and gRPC status code.",
          labelNames: ["service", "method", "code"] as const,
          registers,
        }),
    ),
    duration: getOrCreate(
      registry,
      METRIC_NAMES.rpcDuration,
      () =>
        new Histogram({
          name: METRIC_NAMES.rpcDuration,
          help: "Seconds from receiving an RPC until it ends (for streams: until the stream ends).",
          labelNames: ["service", "method"] as const,
          buckets: [...RPC_DURATION_BUCKETS],
          registers,
        }),
    ),
    inFlight: getOrCreate(
      registry,
      METRIC_NAMES.rpcInFlight,
      () =>
        new Gauge({
          name: METRIC_NAMES.rpcInFlight,
          help: "RPCs in progress, open streams included.",
          labelNames: ["service", "method"] as const,
          registers,
        }),
    ),
  };
}

/** gRPC's canonical status code names, indexed by code number (0 = OK). */
const GRPC_CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** The canonical gRPC name of a status code (`NOT_FOUND`), as used in the `code` label; 0 is `OK`. */
export function grpcCodeName(code: Code | 0): string {
  return GRPC_CODE_NAMES[code] ?? "UNKNOWN";
}

/**
 * A connect server interceptor recording the RED metrics of every call: `requests_total` with the
 * final code, `duration_seconds` and `in_flight`. `method` is the full RPC name
 * (`taskmesh.v1.TaskService/GetTask`); `service` is the taskmesh service (`gateway`).
 *
 * Streams are measured over their whole life: the duration runs until the stream ends (the
 * handler returns or throws, or the client goes away), and the code is the one it ends with. A
 * client that leaves mid-stream is counted as CANCELLED.
 */
export function rpcMetricsInterceptor(registry: Registry, service: string): Interceptor {
  const metrics = rpcMetrics(registry);
  return (next) => async (req) => {
    const labels = { service, method: `${req.method.parent.typeName}/${req.method.name}` };
    const stopTimer = metrics.duration.startTimer(labels);
    metrics.inFlight.inc(labels);
    let done = false;
    const finish = (code: Code | 0): void => {
      if (done) return;
      done = true;
      stopTimer();
      metrics.inFlight.dec(labels);
      metrics.requests.inc({ ...labels, code: grpcCodeName(code) });
    };
    let res;
    try {
      res = await next(req);
    } catch (err) {
      finish(ConnectError.from(err).code);
      throw err;
    }
    if (!res.stream) {
      finish(0);
      return res;
    }
    // A stream whose consumer drops it without calling return() never reaches `finally` below:
    // the call's signal (aborted when the client goes away or the deadline passes) is the
    // backstop that still counts it and keeps in_flight from leaking.
    const signal = req.signal;
    const onAbort = (): void => finish(ConnectError.from(signal.reason, Code.Canceled).code);
    signal.addEventListener("abort", onAbort, { once: true });
    const messages = res.message;
    async function* measured() {
      let code: Code | 0 = Code.Canceled;
      try {
        yield* messages;
        code = 0;
      } catch (err) {
        code = ConnectError.from(err).code;
        throw err;
      } finally {
        signal.removeEventListener("abort", onAbort);
        finish(code);
      }
    }
    return { ...res, message: measured() };
  };
}

/** The worker's own metrics (RPC metrics come from the shared server). */
export interface WorkerMetrics {
  started: Counter<"type">;
  finished: Counter<"outcome">;
  /** Reports slots and slots in use at scrape time. */
  observeSlots(read: () => { slots: number; used: number }): void;
}

/** Registers the worker's metrics on `registry`. */
export function workerMetrics(registry: Registry): WorkerMetrics {
  const started = new Counter({
    name: METRIC_NAMES.workerTasksStarted,
    help: "Task attempts started by this worker, by type.",
    labelNames: ["type"] as const,
    registers: [registry],
  });
  const finished = new Counter({
    name: METRIC_NAMES.workerTasksFinished,
    help: "Task attempts finished by this worker, by outcome (succeeded, failed, cancelled).",
    labelNames: ["outcome"] as const,
    registers: [registry],
  });
  let read: () => { slots: number; used: number } = () => ({ slots: 0, used: 0 });
  new Gauge({
    name: METRIC_NAMES.workerSlots,
    help: "Configured task slots of this worker.",
    registers: [registry],
    collect() {
      this.set(read().slots);
    },
  });
  new Gauge({
    name: METRIC_NAMES.workerSlotsUsed,
    help: "Task slots in use on this worker.",
    registers: [registry],
    collect() {
      this.set(read().used);
    },
  });
  return {
    started,
    finished,
    observeSlots(r) {
      read = r;
    },
  };
}

/** Buckets for task wait and run times, from 1 ms to 10 minutes. */
export const TASK_SECONDS_BUCKETS: readonly number[] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 600];
/** Buckets for calls to Redis and etcd, from 100 µs to 1 s. */
export const CALL_SECONDS_BUCKETS: readonly number[] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1];

/** The scheduler's own metrics (RPC metrics come from the shared server). */
export interface SchedulerMetrics {
  attemptsFinished: Counter<"type" | "outcome">;
  runSeconds: Histogram<"type">;
  queueWaitSeconds: Histogram<"queue">;
  redisCallSeconds: Histogram<"op">;
  submitted: Counter;
  dispatched: Counter<"queue">;
  requeued: Counter<"reason">;
  leader: Gauge;
  workers: Gauge;
}

/** Registers the scheduler's metrics on `registry`. */
export function schedulerMetrics(registry: Registry): SchedulerMetrics {
  return {
    attemptsFinished: new Counter({
      name: METRIC_NAMES.taskAttemptsFinished,
      help: "Task attempts whose result the leader recorded, by type and outcome.",
      labelNames: ["type", "outcome"] as const,
      registers: [registry],
    }),
    runSeconds: new Histogram({
      name: METRIC_NAMES.taskRunSeconds,
      help: "Seconds from dispatching an attempt to receiving its result.",
      labelNames: ["type"] as const,
      buckets: [...TASK_SECONDS_BUCKETS],
      registers: [registry],
    }),
    queueWaitSeconds: new Histogram({
      name: METRIC_NAMES.taskQueueWaitSeconds,
      help: "Seconds a task waited ready in its queue before it was dispatched.",
      labelNames: ["queue"] as const,
      buckets: [...TASK_SECONDS_BUCKETS],
      registers: [registry],
    }),
    redisCallSeconds: new Histogram({
      name: METRIC_NAMES.redisCallSeconds,
      help: "Seconds per Redis script call of the task store, by script.",
      labelNames: ["op"] as const,
      buckets: [...CALL_SECONDS_BUCKETS],
      registers: [registry],
    }),
    submitted: new Counter({
      name: METRIC_NAMES.tasksSubmitted,
      help: "Tasks stored by this replica (idempotent repeats not counted).",
      registers: [registry],
    }),
    dispatched: new Counter({
      name: METRIC_NAMES.tasksDispatched,
      help: "Task attempts sent to workers by this replica while it led, by queue.",
      labelNames: ["queue"] as const,
      registers: [registry],
    }),
    requeued: new Counter({
      name: METRIC_NAMES.tasksRequeued,
      help: "Running attempts given back to their queue, by reason.",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    leader: new Gauge({
      name: METRIC_NAMES.schedulerLeader,
      help: "1 while this replica is the leader.",
      registers: [registry],
    }),
    workers: new Gauge({
      name: METRIC_NAMES.schedulerWorkers,
      help: "Workers with a ready stream to this replica (leader only).",
      registers: [registry],
    }),
  };
}

/** One queue's depths as the scheduler reports them (a subset of QueueStats). */
export interface QueueDepth {
  name: string;
  queued: bigint;
  running: bigint;
  delayed: bigint;
  retryWait: bigint;
  dead: bigint;
  oldestQueuedAgeMs: number;
  paused: boolean;
}

/**
 * Registers the per-queue gauges (autoscaling signals), read from Redis at scrape time through
 * `read`. Every scheduler replica exports the same values: aggregate with `max by (queue)`.
 */
export function queueMetrics(registry: Registry, read: () => Promise<QueueDepth[]>): void {
  let last: Promise<QueueDepth[]> | undefined;
  // One Redis read per scrape, shared by the three gauges.
  const snapshot = (): Promise<QueueDepth[]> => {
    last ??= read().finally(() => {
      setTimeout(() => {
        last = undefined;
      }, 100).unref();
    });
    return last;
  };
  new Gauge({
    name: METRIC_NAMES.queueTasks,
    help: "Tasks per queue and status.",
    labelNames: ["queue", "status"] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const q of await snapshot()) {
        this.set({ queue: q.name, status: "queued" }, Number(q.queued));
        this.set({ queue: q.name, status: "running" }, Number(q.running));
        this.set({ queue: q.name, status: "delayed" }, Number(q.delayed));
        this.set({ queue: q.name, status: "retry_wait" }, Number(q.retryWait));
        this.set({ queue: q.name, status: "dead" }, Number(q.dead));
      }
    },
  });
  new Gauge({
    name: METRIC_NAMES.queueOldestAge,
    help: "Age of the oldest queued task per queue, in seconds (0 when none is queued).",
    labelNames: ["queue"] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const q of await snapshot()) this.set({ queue: q.name }, q.oldestQueuedAgeMs / 1000);
    },
  });
  new Gauge({
    name: METRIC_NAMES.queuePaused,
    help: "1 while the queue is paused.",
    labelNames: ["queue"] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const q of await snapshot()) this.set({ queue: q.name }, q.paused ? 1 : 0);
    },
  });
}

/** The config client's metrics (lib/config-client.ts). */
export interface ConfigClientMetrics {
  /** {@link METRIC_NAMES.configAppliedRevision} */
  appliedRevision: Gauge<"namespace">;
  /** {@link METRIC_NAMES.configClientConnected} */
  connected: Gauge;
}

/**
 * Registers (or returns, when already registered) the config client's metrics on `registry`. Two
 * clients sharing a registry share the series: one client per process is the intended use.
 */
export function configClientMetrics(registry: Registry): ConfigClientMetrics {
  return {
    appliedRevision: getOrCreate(
      registry,
      METRIC_NAMES.configAppliedRevision,
      () =>
        new Gauge({
          name: METRIC_NAMES.configAppliedRevision,
          help: "Revision of the configuration this service applies, per namespace (0: none).",
          labelNames: ["namespace"] as const,
          registers: [registry],
        }),
    ),
    connected: getOrCreate(
      registry,
      METRIC_NAMES.configClientConnected,
      () =>
        new Gauge({
          name: METRIC_NAMES.configClientConnected,
          help: "1 while the config client follows a config service live, 0 while it runs on its last-known config.",
          registers: [registry],
        }),
    ),
  };
}

/**
 * Registers the gateway's breaker gauge, read at scrape time: `read` returns, per upstream
 * service, each replica's breaker state (true = open).
 */
export function breakerMetrics(registry: Registry, read: () => { upstream: string; replica: string; open: boolean }[]): void {
  new Gauge({
    name: METRIC_NAMES.gatewayBreakerOpen,
    help: "1 while the gateway's circuit breaker to an upstream replica is open.",
    labelNames: ["upstream", "replica"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const b of read()) this.set({ upstream: b.upstream, replica: b.replica }, b.open ? 1 : 0);
    },
  });
}

/** Histogram of etcd call latency, for the services that call etcd on request paths. */
export function etcdCallMetrics(registry: Registry): Histogram<"op"> {
  return getOrCreate(
    registry,
    METRIC_NAMES.etcdCallSeconds,
    () =>
      new Histogram({
        name: METRIC_NAMES.etcdCallSeconds,
        help: "Seconds per etcd call, by operation.",
        labelNames: ["op"] as const,
        buckets: [...CALL_SECONDS_BUCKETS],
        registers: [registry],
      }),
  );
}
