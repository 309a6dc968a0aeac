/**
 * taskmesh under the benchmark: a whole mesh of real processes (scheduler, gateway, workers) on
 * the run's etcd and Redis, driven end to end through the gateway's gRPC API. Queue counts come
 * from the queue's Redis keys (`<prefix>:{default}:ready:<1..4>:<tenant>` lane lists, `lanes`, `running`, `done`, `dead`).
 */
import { join } from "node:path";
import { TaskStatus, type Task } from "../gen/taskmesh/v1/task_pb.js";
import { TaskService } from "../gen/taskmesh/v1/task_service_pb.js";
import { unaryClient } from "../lib/client.js";
import { GrpcChannel } from "../lib/grpc-channel.js";
import { uniquePrefix } from "../test/support/ids.js";
import { startMesh, type Mesh, type ServiceProcess } from "../test/support/mesh.js";
import { pidByCommandLine, pool } from "./stats.js";
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

const STAMP_HANDLERS = join(import.meta.dirname, "stamp-handler.ts");

type SubmitInit = { type: string; payload?: { ms: number } };

function request(t: BenchTask): SubmitInit {
  switch (t.type) {
    case "noop":
    case "stamp":
      return { type: t.type };
    case "sleep":
      return { type: "sleep", payload: { ms: t.ms } };
  }
}

function ms(t: { seconds: bigint; nanos: number } | undefined): number | undefined {
  return t === undefined ? undefined : Number(t.seconds) * 1000 + t.nanos / 1e6;
}

/** Starts a fresh mesh (no workers yet) with its own etcd root and Redis prefix. */
export async function openTaskmesh(env: BenchEnv, label: string): Promise<QueueSystem> {
  const prefix = uniquePrefix(`tm-${label}`);
  const mesh: Mesh = await startMesh({
    etcdEndpoint: env.etcd.address,
    redisUrl: env.redis.address,
    prefix,
    workers: 0,
  });
  // taskmesh's own lean gRPC client (lib/client.ts), as BullMQ's side uses BullMQ's Queue.
  const channel = new GrpcChannel(mesh.gateway.address);
  const c = { tasks: unaryClient(TaskService, channel, { apiKey: mesh.apiKey }) };
  const q = `${prefix}:{default}:`;
  const redis = env.redisClient;
  const isFinished = (id: string): [string, string][] => [
    [`${q}done`, id],
    [`${q}dead`, id],
  ];

  return {
    name: "taskmesh",
    async submit(task) {
      return (await c.tasks.submitTask(request(task))).id;
    },
    async submitBatch(tasks) {
      const r = await c.tasks.submitTasks({ tasks: tasks.map(request) });
      return r.tasks.map((t) => t.id);
    },
    startWorker(name, slots): WorkerHandle {
      const id = `${prefix}-${name}`;
      let proc: ServiceProcess | undefined;
      const ready = mesh.addWorker(id, ["--slots", String(slots), "--handlers", STAMP_HANDLERS]).then((p) => {
        proc = p;
      });
      let pid: number | undefined;
      return {
        pid() {
          pid ??= proc?.child.pid ?? pidByCommandLine(`--id\0${id}\0`);
          return pid;
        },
        ready,
        async kill() {
          await ready;
          await proc?.kill();
        },
        async stop() {
          await ready;
          await proc?.stop();
        },
      };
    },
    async counts(): Promise<QueueCounts> {
      // Ready tasks wait in lanes, one per tenant, each a list per priority
      // (`ready:<1..4>:<tenant>`, with `lanes` naming the tenants: task-store.ts).
      const lanes = await redis.smembers(`${q}lanes`);
      const p = redis.pipeline();
      for (const lane of lanes) for (let pri = 1; pri <= 4; pri++) p.llen(`${q}ready:${pri}:${lane}`);
      p.zcard(`${q}running`).zcard(`${q}done`).zcard(`${q}dead`);
      const replies = pipelineNumbers(await p.exec());
      const [running, done, dead] = replies.slice(-3);
      const waiting = replies.slice(0, -3).reduce((a, b) => a + b, 0);
      return { waiting, active: running ?? 0, finished: (done ?? 0) + (dead ?? 0) };
    },
    activeIds() {
      return redis.zrange(`${q}running`, "0", "-1");
    },
    async countFinished(ids) {
      let n = 0;
      for (let i = 0; i < ids.length; i += 1000) {
        const p = redis.pipeline();
        const chunk = ids.slice(i, i + 1000);
        for (const id of chunk) for (const [k, m] of isFinished(id)) p.zscore(k, m);
        const replies = (await p.exec()) ?? [];
        for (let j = 0; j < chunk.length; j++) {
          if (replies[2 * j]?.[1] !== null || replies[2 * j + 1]?.[1] !== null) n++;
        }
      }
      return n;
    },
    async outcomes(ids) {
      const tasks: Task[] = await pool(ids.length, 32, (i) => c.tasks.getTask({ taskId: ids[i] as string }));
      return tasks.map((t): TaskOutcome => {
        const s = t.result?.["s"];
        return {
          id: t.id,
          succeeded: t.status === TaskStatus.SUCCEEDED,
          starts: t.attempt,
          handlerStartMs: typeof s === "number" ? s : undefined,
          startedAtMs: ms(t.startedAt),
          finishedAtMs: ms(t.finishedAt),
        };
      });
    },
    redisBytes() {
      return memoryOfKeys(redis, `${prefix}:*`);
    },
    servers() {
      const s: Record<string, number> = { etcd: env.etcd.process.pid ?? 0 };
      s["gateway"] = mesh.gateway.child.pid ?? 0;
      for (const [i, p] of mesh.schedulers.entries()) s[i === 0 ? "scheduler" : `scheduler${i + 1}`] = p.child.pid ?? 0;
      return s;
    },
    close() {
      channel.close();
      return mesh.close();
    },
  };
}
