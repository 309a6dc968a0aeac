import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { Logger } from "pino";
import { ClusterService } from "../../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { SchedulerService } from "../../gen/taskmesh/v1/scheduler_service_pb.js";
import { TaskService } from "../../gen/taskmesh/v1/task_service_pb.js";
import { toConnectError } from "../../lib/errors.js";
import { TENANT_HEADER } from "../../lib/task-types.js";
import type { Upstreams } from "./upstreams.js";

/** What the gateway's public services forward to. */
export interface GatewayUpstreams {
  schedulers: Upstreams<typeof SchedulerService>;
  /** The same scheduler replicas, for ScheduleService. */
  schedules: Upstreams<typeof ScheduleService>;
  config: Upstreams<typeof ConfigService>;
  logger: Logger;
}

/**
 * The public services as thin forwarders: each call goes to a scheduler (or the config service)
 * with the caller's tenant in a header; errors pass through with their codes, anything else
 * becomes INTERNAL without details.
 */
export function gatewayRoutes(up: GatewayUpstreams): (router: ConnectRouter) => void {
  const log = up.logger.child({ component: "gateway" });
  const opts = (ctx: HandlerContext) => ({
    signal: ctx.signal,
    headers: { [TENANT_HEADER]: "default" },
  });
  const call = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw toConnectError(err, log);
    }
  };
  const s = () => up.schedulers.pick();
  const c = () => up.config.pick();
  /** A read: retried on another replica when one is unavailable. */
  const read = <T>(fn: (client: ReturnType<typeof s>) => Promise<T>): Promise<T> =>
    call(() => up.schedulers.call(fn, true));

  const tasks: ServiceImpl<typeof TaskService> = {
    submitTask: (req, ctx) => call(() => s().submitTask(req, opts(ctx))),
    submitTasks: (req, ctx) => call(() => s().submitTasks(req, opts(ctx))),
    getTask: (req, ctx) => read((x) => x.getTask(req, opts(ctx))),
    listTasks: (req, ctx) => read((x) => x.listTasks(req, opts(ctx))),
    cancelTask: (req, ctx) => call(() => s().cancelTask(req, opts(ctx))),
    retryTask: (req, ctx) => call(() => s().retryTask(req, opts(ctx))),
    async *watchTask(req, ctx) {
      try {
        yield* s().watchTask(req, opts(ctx));
      } catch (err) {
        throw toConnectError(err, log);
      }
    },
  };
  const cluster: ServiceImpl<typeof ClusterService> = {
    listWorkers: (req, ctx) => read((x) => x.listWorkers(req, opts(ctx))),
    getClusterStatus: (req, ctx) => read((x) => x.getClusterStatus(req, opts(ctx))),
    pauseQueue: (req, ctx) => call(() => s().pauseQueue(req, opts(ctx))),
    resumeQueue: (req, ctx) => call(() => s().resumeQueue(req, opts(ctx))),
    async *watchWorkers(req, ctx) {
      try {
        yield* s().watchWorkers(req, opts(ctx));
      } catch (err) {
        throw toConnectError(err, log);
      }
    },
  };
  const config: ServiceImpl<typeof ConfigService> = {
    getConfig: (req, ctx) => call(() => c().getConfig(req, opts(ctx))),
    putConfig: (req, ctx) => call(() => c().putConfig(req, opts(ctx))),
    deleteConfig: (req, ctx) => call(() => c().deleteConfig(req, opts(ctx))),
    listConfigs: (req, ctx) => call(() => c().listConfigs(req, opts(ctx))),
    getConfigHistory: (req, ctx) => call(() => c().getConfigHistory(req, opts(ctx))),
    rollbackConfig: (req, ctx) => call(() => c().rollbackConfig(req, opts(ctx))),
    promoteGrayConfig: (req, ctx) => call(() => c().promoteGrayConfig(req, opts(ctx))),
    abandonGrayConfig: (req, ctx) => call(() => c().abandonGrayConfig(req, opts(ctx))),
    async *watchConfig(req, ctx) {
      try {
        yield* c().watchConfig(req, opts(ctx));
      } catch (err) {
        throw toConnectError(err, log);
      }
    },
  };
  const sched = <T>(fn: (client: ReturnType<typeof up.schedules.pick>) => Promise<T>, idempotent: boolean): Promise<T> =>
    call(() => up.schedules.call(fn, idempotent));
  const schedules: ServiceImpl<typeof ScheduleService> = {
    createSchedule: (req, ctx) => sched((x) => x.createSchedule(req, opts(ctx)), false),
    getSchedule: (req, ctx) => sched((x) => x.getSchedule(req, opts(ctx)), true),
    listSchedules: (req, ctx) => sched((x) => x.listSchedules(req, opts(ctx)), true),
    deleteSchedule: (req, ctx) => sched((x) => x.deleteSchedule(req, opts(ctx)), false),
    pauseSchedule: (req, ctx) => sched((x) => x.pauseSchedule(req, opts(ctx)), false),
    resumeSchedule: (req, ctx) => sched((x) => x.resumeSchedule(req, opts(ctx)), false),
  };
  return (router) => {
    router.service(TaskService, tasks);
    router.service(ScheduleService, schedules);
    router.service(ClusterService, cluster);
    router.service(ConfigService, config);
  };
}
