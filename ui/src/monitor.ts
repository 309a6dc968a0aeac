import type { GetClusterStatusResponse } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import type { Task } from "../../gen/taskmesh/v1/task_pb.js";
import { api } from "./api.js";
import { isTerminal, ms } from "./format.js";
import { FinishedTracker, Series, type FinishedSample } from "./stats.js";

/** How often the cluster is polled. */
export const POLL_MS = 2000;
/** How many of the newest tasks each poll reads to find the ones that finished. */
export const SAMPLE_TASKS = 200;
/** How far back the charts go. */
export const WINDOW_MS = 5 * 60_000;

/**
 * Polls GetClusterStatus and the newest tasks in the background while the user is signed in,
 * and keeps the histories the overview charts (throughput, latency, queue depth, slots in use).
 * It runs whatever view is open, so the charts have data when the user comes back; it pauses
 * while the tab is hidden.
 */
export class Monitor {
  /** The latest cluster status, once one poll succeeded. */
  status: GetClusterStatusResponse | undefined;
  /** When `status` was read (browser clock). */
  statusAtMs = 0;
  /** The latest polling error per call (cleared by the next success). */
  readonly errors = new Map<"GetClusterStatus" | "ListTasks", unknown>();
  readonly finished = new FinishedTracker(WINDOW_MS);
  readonly queued = new Series(WINDOW_MS);
  readonly running = new Series(WINDOW_MS);
  readonly slotsUsed = new Series(WINDOW_MS);
  private readonly listeners = new Set<() => void>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private running_ = false;
  private abort = new AbortController();
  private polling = false;

  /** Starts polling (idempotent). */
  start(): void {
    if (this.running_) return;
    this.running_ = true;
    this.abort = new AbortController();
    void this.tick();
  }

  /** Stops polling and forgets everything (sign-out). Safe to call twice. */
  stop(): void {
    this.running_ = false;
    this.abort.abort();
    clearTimeout(this.timer);
    this.status = undefined;
    this.errors.clear();
  }

  /** Calls `fn` after every poll; returns the unsubscribe function. */
  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Polls now (the overview calls it when opened). */
  refresh(): void {
    if (this.polling) return;
    clearTimeout(this.timer);
    void this.tick();
  }

  private async tick(): Promise<void> {
    if (!this.running_ || this.polling) return;
    this.polling = true;
    try {
      if (!document.hidden) await this.poll(this.abort.signal);
    } finally {
      this.polling = false;
    }
    if (!this.running_) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), POLL_MS);
  }

  private async poll(signal: AbortSignal): Promise<void> {
    const [status, list] = await Promise.allSettled([
      api.cluster.getClusterStatus({}, { signal, timeoutMs: 10_000 }),
      api.tasks.listTasks({ pageSize: SAMPLE_TASKS }, { signal, timeoutMs: 10_000 }),
    ]);
    if (signal.aborted) return;
    const now = Date.now();
    if (status.status === "fulfilled") {
      const st = status.value;
      this.status = st;
      this.statusAtMs = now;
      this.errors.delete("GetClusterStatus");
      this.queued.push(now, st.queues.reduce((n, q) => n + Number(q.queued), 0));
      this.running.push(now, st.queues.reduce((n, q) => n + Number(q.running), 0));
      this.slotsUsed.push(now, st.workers.reduce((n, w) => n + w.slotsUsed, 0));
    } else {
      this.errors.set("GetClusterStatus", status.reason);
    }
    if (list.status === "fulfilled") {
      this.errors.delete("ListTasks");
      this.finished.add(list.value.tasks.flatMap(sample), now);
    } else {
      this.errors.set("ListTasks", list.reason);
    }
    this.finished.prune(now);
    for (const fn of this.listeners) fn();
  }
}

/** A finished task's sample, or nothing for a task still going. */
function sample(t: Task): FinishedSample[] {
  if (!isTerminal(t.status)) return [];
  const finished = ms(t.finishedAt);
  const created = ms(t.createdAt);
  if (finished === undefined || created === undefined) return [];
  const started = ms(t.startedAt);
  return [
    {
      id: t.id,
      finishedMs: finished,
      latencyMs: Math.max(0, finished - created),
      waitMs: started === undefined ? undefined : Math.max(0, started - created),
    },
  ];
}
