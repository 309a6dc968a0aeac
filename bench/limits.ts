/**
 * The physical limits printed beside the side-by-side numbers: how fast this machine's Redis runs a
 * trivial Lua script (`redis-benchmark` EVALSHA), and how many tasks per second a bare gRPC stream
 * carries between two processes (a connect-node echo of `WorkerService.Work` messages).
 */
import { execFile, spawn } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ulid } from "ulid";
import {
  SchedulerMessageSchema,
  TaskAssignmentSchema,
  WorkerService,
  type SchedulerMessage,
  type TaskAssignment,
} from "../gen/taskmesh/v1/worker_service_pb.js";
import { AsyncQueue } from "../lib/async-queue.js";
import { cpuPer1000, cpuSnapshot } from "./stats.js";
import type { Redis } from "ioredis";

const run = promisify(execFile);

/** One redis-benchmark measurement. */
export interface LuaRate {
  clients: number;
  pipeline: number;
  requests: number;
  perSecond: number;
}

/** The Lua script the limit is measured with: one INCR, about the least a script can do. */
export const TRIVIAL_LUA = "return redis.call('INCR', KEYS[1])";

/**
 * `redis-benchmark -n <n> -c <clients> -P <pipeline> -q evalsha <sha> 1 bench:lua` against the
 * run's Redis: requests per second of a trivial script.
 */
export async function redisEvalshaRate(
  redis: Redis,
  port: number,
  o: { requests: number; clients: number; pipeline: number },
): Promise<LuaRate> {
  const sha = String(await redis.script("LOAD", TRIVIAL_LUA));
  const args = ["-h", "127.0.0.1", "-p", String(port), "-n", String(o.requests), "-c", String(o.clients)];
  args.push("-P", String(o.pipeline), "-q", "evalsha", sha, "1", "bench:lua");
  const { stdout } = await run("redis-benchmark", args, { timeout: 300_000 });
  const all = [...stdout.matchAll(/([\d.]+) requests per second/g)];
  const rate = Number(all.at(-1)?.[1]);
  if (!Number.isFinite(rate)) throw new Error(`redis-benchmark: no rate in ${JSON.stringify(stdout.slice(-300))}`);
  await redis.del("bench:lua");
  return { ...o, perSecond: rate };
}

/** One gRPC echo measurement. */
export interface EchoRate {
  /** Tasks per message. */
  batch: number;
  tasks: number;
  perSecond: number;
  /** Most tasks sent and not echoed at once. */
  window: number;
  cpuMsPer1000: Record<string, number>;
}

/**
 * Starts the echo server (bench/echo-server.ts) in its own process and streams `tasks`
 * assignments to it in messages of `batch`, at most `window` tasks unanswered, for each batch size.
 */
export async function grpcEchoRates(batches: number[], tasks: number, window = 256): Promise<EchoRate[]> {
  const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "echo-server.ts")], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  try {
    const port = await new Promise<number>((res, rej) => {
      child.once("message", (m: { port?: number }) => (m.port === undefined ? rej(new Error("no port")) : res(m.port)));
      child.once("exit", () => rej(new Error("echo server exited")));
    });
    const client = createClient(WorkerService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    const procs = { client: process.pid, server: child.pid ?? 0 };
    const out: EchoRate[] = [];
    for (const batch of batches) {
      const one = async (n: number): Promise<number> => {
        const assignments: TaskAssignment[] = Array.from({ length: batch }, () =>
          create(TaskAssignmentSchema, { taskId: ulid(), attempt: 1, type: "noop", queue: "default", tenant: "default" }),
        );
        const msg = (k: number): SchedulerMessage =>
          create(SchedulerMessageSchema, { epoch: 1n, assignments: k === batch ? assignments : assignments.slice(0, k) });
        const q = new AsyncQueue<SchedulerMessage>();
        const limit = Math.max(window, batch);
        let sent = 0;
        let inFlight = 0;
        let echoed = 0;
        const pump = (): void => {
          while (sent < n && inFlight + Math.min(batch, n - sent) <= limit) {
            const k = Math.min(batch, n - sent);
            q.push(msg(k));
            sent += k;
            inFlight += k;
          }
          if (sent >= n) q.end();
        };
        const t0 = performance.now();
        pump();
        for await (const r of client.work(q)) {
          echoed += r.results.length;
          inFlight -= r.results.length;
          if (echoed >= n) break;
          pump();
        }
        return (performance.now() - t0) / 1000;
      };
      await one(Math.min(tasks, 5000)); // warm-up
      const c0 = cpuSnapshot(procs);
      const seconds = await one(tasks);
      out.push({ batch, tasks, perSecond: tasks / seconds, window, cpuMsPer1000: cpuPer1000(c0, cpuSnapshot(procs), tasks) });
    }
    return out;
  } finally {
    child.kill("SIGKILL");
  }
}
