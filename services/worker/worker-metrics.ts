import { Counter, Gauge, type Registry } from "prom-client";

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
    name: "taskmesh_worker_tasks_started_total",
    help: "Task attempts started by this worker, by type.",
    labelNames: ["type"] as const,
    registers: [registry],
  });
  const finished = new Counter({
    name: "taskmesh_worker_tasks_finished_total",
    help: "Task attempts finished by this worker, by outcome (succeeded, failed, cancelled).",
    labelNames: ["outcome"] as const,
    registers: [registry],
  });
  let read: () => { slots: number; used: number } = () => ({ slots: 0, used: 0 });
  new Gauge({
    name: "taskmesh_worker_slots",
    help: "Configured task slots of this worker.",
    registers: [registry],
    collect() {
      this.set(read().slots);
    },
  });
  new Gauge({
    name: "taskmesh_worker_slots_used",
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
