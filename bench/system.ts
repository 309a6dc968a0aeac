/**
 * What the side-by-side benchmark needs from a queue system, so that every scenario runs the same
 * code against taskmesh (real processes, through the gateway) and against BullMQ (its own queue on
 * the same Redis server). Counts and memory are read straight from Redis through the bench's own
 * connection, so watching a queue costs one cheap pipelined call and no gateway traffic.
 */
import type { Redis } from "ioredis";
import type { Backend } from "../test/support/backends.js";
import type { ProcessMap } from "./stats.js";

/** The task types of the benchmark; each system implements them the same way. */
export type BenchTask =
  /** Does nothing. */
  | { type: "noop" }
  /** Sleeps `ms` milliseconds. */
  | { type: "sleep"; ms: number }
  /** Returns `{ s: wallMs() }` taken in the worker when the handler starts. */
  | { type: "stamp" };

/** The backends shared by both systems in one run. */
export interface BenchEnv {
  readonly redis: Backend;
  readonly etcd: Backend;
  /** The bench's own connection, for counts and memory (never the systems' keys otherwise). */
  readonly redisClient: Redis;
}

/** Where a system's tasks are, read from Redis. */
export interface QueueCounts {
  /** Waiting to start. */
  waiting: number;
  /** Started, not finished. */
  active: number;
  /** Finished (succeeded or failed for good). */
  finished: number;
}

/** How one task ended, read after a scenario. */
export interface TaskOutcome {
  id: string;
  succeeded: boolean;
  /** Attempts started (taskmesh `attempt`, BullMQ `attemptsStarted`); >1 means it ran again. */
  starts: number;
  /** `{ s }` of a `stamp` task: wall ms in the worker at the handler's start (sub-ms). */
  handlerStartMs: number | undefined;
  /** The system's own start time, ms resolution (taskmesh `started_at`, BullMQ `processedOn`). */
  startedAtMs: number | undefined;
  /** The system's own finish time, ms resolution (taskmesh `finished_at`, BullMQ `finishedOn`). */
  finishedAtMs: number | undefined;
}

/** One worker process of a system. */
export interface WorkerHandle {
  /** Its pid once known (a taskmesh worker is found by command line before it is healthy). */
  pid(): number | undefined;
  /** Settles when the worker is up (taskmesh: `/healthz` answers; BullMQ: connected and running). */
  readonly ready: Promise<void>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** Graceful stop. */
  stop(): Promise<void>;
}

/** A queue system under test, one queue of it. */
export interface QueueSystem {
  /** "taskmesh" or "BullMQ". */
  readonly name: string;
  /** Enqueues one task with one call; resolves to its id. */
  submit(task: BenchTask): Promise<string>;
  /** Enqueues tasks with one call (taskmesh SubmitTasks, BullMQ addBulk); resolves to their ids. */
  submitBatch(tasks: BenchTask[]): Promise<string[]>;
  /** Starts a worker process running `slots` tasks at once. */
  startWorker(name: string, slots: number): WorkerHandle;
  /** Where the queue's tasks are. */
  counts(): Promise<QueueCounts>;
  /** Ids of the tasks started and not finished. */
  activeIds(): Promise<string[]>;
  /** How many of `ids` are finished. */
  countFinished(ids: readonly string[]): Promise<number>;
  /** How each task ended. */
  outcomes(ids: readonly string[]): Promise<TaskOutcome[]>;
  /** Bytes of Redis held by this system's keys (`MEMORY USAGE … SAMPLES 0` summed over a SCAN). */
  redisBytes(): Promise<number>;
  /** The system's long-lived server processes (taskmesh: gateway, scheduler, etcd), by role. */
  servers(): ProcessMap;
  /** Stops everything the system started. */
  close(): Promise<void>;
}

/** Sums `MEMORY USAGE key SAMPLES 0` over every key matching `pattern`. */
export async function memoryOfKeys(redis: Redis, pattern: string): Promise<number> {
  let total = 0;
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    cursor = next;
    if (keys.length > 0) {
      const p = redis.pipeline();
      for (const k of keys) p.call("MEMORY", "USAGE", k, "SAMPLES", "0");
      for (const [err, v] of (await p.exec()) ?? []) if (err === null && typeof v === "number") total += v;
    }
  } while (cursor !== "0");
  return total;
}

/** Numbers from a pipeline's replies (errors and non-numbers as 0). */
export function pipelineNumbers(replies: [Error | null, unknown][] | null): number[] {
  return (replies ?? []).map(([err, v]) => (err === null && typeof v === "number" ? v : 0));
}
