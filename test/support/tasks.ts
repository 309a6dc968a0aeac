import { taskIdFactory } from "../../services/scheduler/submit.js";
import type { NewTask } from "../../services/scheduler/task-store.js";

const nextId = taskIdFactory();

/**
 * A task as the scheduler hands it to the store, for store and codec tests: a `noop` of tenant
 * `acme` in queue `default`, every option at its plain value (no jitter, so backoffs are exact),
 * with a fresh id of its queue; `over` wins, the id included.
 */
export function newTask(over: Partial<NewTask> = {}): NewTask {
  return {
    id: nextId(over.queue ?? "default", Date.now()),
    tenant: "acme",
    type: "noop",
    queue: "default",
    priority: 2,
    payload: {},
    affinityKey: "",
    maxAttempts: 3,
    backoff: { initialMs: 1000, maxMs: 60_000, multiplier: 2, jitter: 0 },
    timeoutMs: 0,
    runAtMs: 0,
    idempotencyKey: "",
    labels: {},
    resultTtlMs: 86_400_000,
    concurrencyKey: "",
    concurrencyLimit: 0,
    ...over,
  };
}
