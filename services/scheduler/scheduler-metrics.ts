import { Counter, Gauge, type Registry } from "prom-client";

/** The scheduler's own metrics (RPC metrics come from the shared server). */
export interface SchedulerMetrics {
  submitted: Counter;
  dispatched: Counter<"queue">;
  requeued: Counter<"reason">;
  leader: Gauge;
  workers: Gauge;
}

/** Registers the scheduler's metrics on `registry`. */
export function schedulerMetrics(registry: Registry): SchedulerMetrics {
  return {
    submitted: new Counter({
      name: "taskmesh_tasks_submitted_total",
      help: "Tasks stored by this replica (idempotent repeats not counted).",
      registers: [registry],
    }),
    dispatched: new Counter({
      name: "taskmesh_tasks_dispatched_total",
      help: "Task attempts sent to workers by this replica while it led, by queue.",
      labelNames: ["queue"] as const,
      registers: [registry],
    }),
    requeued: new Counter({
      name: "taskmesh_tasks_requeued_total",
      help: "Running attempts given back to their queue, by reason.",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    leader: new Gauge({
      name: "taskmesh_scheduler_leader",
      help: "1 while this replica is the leader.",
      registers: [registry],
    }),
    workers: new Gauge({
      name: "taskmesh_scheduler_workers",
      help: "Workers with a ready stream to this replica (leader only).",
      registers: [registry],
    }),
  };
}
