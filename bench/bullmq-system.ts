/**
 * BullMQ under the benchmark: a `Queue` in the bench process (the producer, like a taskmesh
 * client) and `Worker`s in separate processes (bench/bullmq-worker.ts), all with BullMQ's default
 * options, on a queue of its own on the run's Redis. Counts come from the queue's keys
 * (`bull:<name>:wait`, `prioritized`, `active`, `completed`, `failed`).
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { Queue } from "bullmq";
import type { BullmqWorkerConfig } from "./bullmq-worker.js";
import { pool } from "./stats.js";
import {
  memoryOfKeys,
  pipelineNumbers,
  type BenchEnv,
  type BenchTask,
  type QueueCounts,
  type QueueSystem,
  type TaskOutcome,
  type WorkerHandle,
} from "./system.js";

const root = join(import.meta.dirname, "..");
const WORKER = join(import.meta.dirname, "bullmq-worker.ts");

function job(t: BenchTask): { name: string; data: { ms?: number } } {
  return t.type === "sleep" ? { name: "sleep", data: { ms: t.ms } } : { name: t.type, data: {} };
}

/** Opens a BullMQ queue named after `label` on the run's Redis. */
export async function openBullmq(env: BenchEnv, label: string): Promise<QueueSystem> {
  const name = `bench-${label}`;
  const queue = new Queue(name, { connection: { host: "127.0.0.1", port: env.redis.port } });
  queue.on("error", (err) => process.stderr.write(`bullmq queue: ${String(err)}\n`));
  await queue.waitUntilReady();
  const k = `bull:${name}:`;
  const redis = env.redisClient;
  const live = new Set<WorkerHandle>();

  return {
    name: "BullMQ",
    async submit(task) {
      const j = job(task);
      return (await queue.add(j.name, j.data)).id ?? "";
    },
    async submitBatch(tasks) {
      return (await queue.addBulk(tasks.map(job))).map((j) => j.id ?? "");
    },
    startWorker(workerName, slots): WorkerHandle {
      const cfg: BullmqWorkerConfig = { host: "127.0.0.1", port: env.redis.port, queue: name, concurrency: slots, name: workerName };
      const child = spawn(process.execPath, ["--import", "tsx", WORKER, JSON.stringify(cfg)], {
        cwd: root,
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      });
      const exited = new Promise<void>((res) => child.once("exit", () => res()));
      let gone = false;
      void exited.then(() => {
        gone = true;
      });
      const ready = new Promise<void>((res, rej) => {
        child.on("message", (m: { type?: string }) => {
          if (m.type === "ready") res();
        });
        void exited.then(() => rej(new Error(`BullMQ worker ${workerName} exited while starting`)));
      });
      ready.catch(() => undefined);
      const handle: WorkerHandle = {
        pid: () => child.pid,
        ready,
        async kill() {
          if (!gone) child.kill("SIGKILL");
          await exited;
          live.delete(handle);
        },
        async stop() {
          if (!gone) {
            if (child.connected) child.send({ type: "close" });
            else child.kill("SIGTERM");
          }
          const t = setTimeout(() => child.kill("SIGKILL"), 20_000);
          await exited;
          clearTimeout(t);
          live.delete(handle);
        },
      };
      live.add(handle);
      return handle;
    },
    async counts(): Promise<QueueCounts> {
      const [wait, prioritized, active, completed, failed] = pipelineNumbers(
        await redis
          .pipeline()
          .llen(`${k}wait`)
          .zcard(`${k}prioritized`)
          .llen(`${k}active`)
          .zcard(`${k}completed`)
          .zcard(`${k}failed`)
          .exec(),
      );
      return { waiting: (wait ?? 0) + (prioritized ?? 0), active: active ?? 0, finished: (completed ?? 0) + (failed ?? 0) };
    },
    activeIds() {
      return redis.lrange(`${k}active`, 0, -1);
    },
    async countFinished(ids) {
      let n = 0;
      for (let i = 0; i < ids.length; i += 1000) {
        const p = redis.pipeline();
        const chunk = ids.slice(i, i + 1000);
        for (const id of chunk) p.zscore(`${k}completed`, id).zscore(`${k}failed`, id);
        const replies = (await p.exec()) ?? [];
        for (let j = 0; j < chunk.length; j++) {
          if (replies[2 * j]?.[1] !== null || replies[2 * j + 1]?.[1] !== null) n++;
        }
      }
      return n;
    },
    async outcomes(ids) {
      return pool(ids.length, 32, async (i): Promise<TaskOutcome> => {
        const id = ids[i] as string;
        const j = await queue.getJob(id);
        const rv: unknown = j?.returnvalue;
        const s = typeof rv === "object" && rv !== null && "s" in rv && typeof rv.s === "number" ? rv.s : undefined;
        return {
          id,
          succeeded: j?.finishedOn !== undefined && (j.failedReason ?? "") === "",
          starts: j?.attemptsStarted ?? 0,
          handlerStartMs: s,
          startedAtMs: j?.processedOn,
          finishedAtMs: j?.finishedOn,
        };
      });
    },
    redisBytes() {
      return memoryOfKeys(redis, `${k}*`);
    },
    servers() {
      return {};
    },
    async close() {
      await Promise.all([...live].map((w) => w.kill()));
      await queue.close();
    },
  };
}
