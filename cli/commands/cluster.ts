/** Cluster commands: `workers` and `status` (scope admin). */
import {
  GetClusterStatusResponseSchema,
  ListWorkersResponseSchema,
  type WorkerInfo,
} from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { callOptions, type CommandSpec } from "../command.js";
import { ExitCode } from "../exit-codes.js";
import { formatDuration, type Output } from "../output.js";

function workerRows(workers: readonly WorkerInfo[]): string[][] {
  return workers.map((w) => [w.id, w.address, `${w.slotsUsed}/${w.slots}`, w.taskTypes.join(",")]);
}

function workerTable(out: Output, workers: readonly WorkerInfo[]): void {
  out.table(["ID", "ADDRESS", "SLOTS", "TYPES"], workerRows(workers), "no workers");
}

const workers: CommandSpec = {
  path: ["workers"],
  args: "",
  summary: "list workers: address, slots used/total, task types",
  flags: {},
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const { cluster } = await ctx.clients();
    const res = await cluster.listWorkers({}, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(ListWorkersResponseSchema, res);
    else workerTable(ctx.out, res.workers);
    return ExitCode.OK;
  },
};

const status: CommandSpec = {
  path: ["status"],
  args: "",
  summary: "show schedulers (and the leader), workers and queue depths",
  flags: {},
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const { cluster } = await ctx.clients();
    const res = await cluster.getClusterStatus({}, callOptions(ctx));
    const { out } = ctx;
    if (out.json) {
      out.printJson(GetClusterStatusResponseSchema, res);
      return ExitCode.OK;
    }
    out.print(out.out("bold", "SCHEDULERS"));
    out.table(
      ["ID", "ADDRESS", "ROLE"],
      res.schedulers.map((s) => [s.id, s.address, s.leader ? out.out("green", "leader") : "replica"]),
      "no schedulers",
    );
    const leaders = res.schedulers.filter((s) => s.leader).length;
    if (res.schedulers.length > 0 && leaders === 0) out.note("warning: no scheduler is the leader: nothing is dispatched");
    out.print("", out.out("bold", "WORKERS"));
    workerTable(out, res.workers);
    const used = res.workers.reduce((n, w) => n + w.slotsUsed, 0);
    const total = res.workers.reduce((n, w) => n + w.slots, 0);
    if (res.workers.length > 0) out.print(`${res.workers.length} worker${res.workers.length === 1 ? "" : "s"}, ${used}/${total} slots in use`);
    out.print("", out.out("bold", "QUEUES"));
    out.table(
      ["NAME", "QUEUED", "RUNNING", "DELAYED", "RETRY_WAIT", "DEAD", "OLDEST QUEUED", "PAUSED"],
      res.queues.map((q) => [
        q.name,
        String(q.queued),
        String(q.running),
        String(q.delayed),
        String(q.retryWait),
        String(q.dead),
        q.queued > 0n ? formatDuration(q.oldestQueuedAge) : "-",
        q.paused ? out.out("yellow", "paused") : "no",
      ]),
      "no queues",
    );
    return ExitCode.OK;
  },
};

/** The cluster commands. */
export const clusterCommands: readonly CommandSpec[] = [workers, status];
