import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { monotonicFactory } from "ulid";
import { pooledRandom } from "../../lib/random.js";
import {
  DeleteScheduleResponseSchema,
  ListSchedulesResponseSchema,
  ScheduleService,
} from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { invalidArgument, notFound, toConnectError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import {
  SCHEDULE_ID,
  firstRun,
  scheduleMessage,
  specFromRequest,
  taskForTick,
  type ScheduleStore,
} from "./schedules.js";
import { tenantOf } from "./scheduler-service.js";
import type { SubmitDefaults } from "./submit.js";

/** What the ScheduleService implementation needs from its replica. */
export interface ScheduleServiceDeps {
  schedules: ScheduleStore;
  /** Task types accepted in a template: built-ins plus those announced by registered workers. */
  knownTypes: () => ReadonlySet<string>;
  defaults: () => SubmitDefaults;
  /** The clock (ms); tests pin it. @default Date.now */
  now?: (() => number) | undefined;
  logger: Logger;
}

const nextId = monotonicFactory(pooledRandom());

/** Builds the ScheduleService implementation; every scheduler replica serves it. */
export function scheduleService(deps: ScheduleServiceDeps): ServiceImpl<typeof ScheduleService> {
  const { schedules } = deps;
  const now = deps.now ?? Date.now;
  const log = deps.logger.child({ component: "schedule-service" });
  const guard = async <T>(method: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw toConnectError(err, log, { method });
    }
  };
  const checkId = (id: string): void => {
    if (id === "") throw invalidArgument("schedule_id", "is required");
  };
  const mustGet = async (tenant: string, id: string) => {
    const rec = await schedules.get(tenant, id);
    if (rec === undefined) throw notFound("schedule", id);
    return rec;
  };

  return {
    createSchedule: (req, ctx) =>
      guard("CreateSchedule", async () => {
        const tenant = tenantOf(ctx);
        const t = now();
        if (req.scheduleId !== "" && !SCHEDULE_ID.test(req.scheduleId)) {
          throw invalidArgument("schedule_id", "1 to 100 letters, digits, _ . -");
        }
        const id = req.scheduleId === "" ? nextId(t) : req.scheduleId;
        const spec = specFromRequest(req, t);
        const template = req.task;
        if (template === undefined) throw invalidArgument("task", "is required");
        if (template.idempotencyKey !== "") {
          throw invalidArgument("task.idempotency_key", "must be empty: each run gets schedule:<id>:<run time ms>");
        }
        if (template.runAt !== undefined) throw invalidArgument("task.run_at", "a template cannot fix a time; use task.delay");
        // Validate exactly what a tick will submit (with its label and key).
        taskForTick(template, id, tenant, t, deps.knownTypes(), deps.defaults(), t, "task.");
        const next = firstRun(spec, t);
        if (next === undefined) throw invalidArgument("cron", "never fires");
        const r = await schedules.create({ id, tenant, spec, template, createdMs: t }, next);
        if (r === "exists") throw new ConnectError(`schedule ${JSON.stringify(id)} already exists`, Code.AlreadyExists);
        if (r === "limit") throw new ConnectError("too many schedules for this tenant", Code.ResourceExhausted);
        log.info({ tenant, scheduleId: id, next }, "schedule created");
        return scheduleMessage(await mustGet(tenant, id));
      }),

    listSchedules: (req, ctx) =>
      guard("ListSchedules", async () => {
        const tenant = tenantOf(ctx);
        if (req.pageSize < 0) throw invalidArgument("page_size", "must not be negative");
        const page = await schedules.list(tenant, req.pageSize === 0 ? 50 : req.pageSize, req.pageToken);
        return create(ListSchedulesResponseSchema, {
          schedules: page.schedules.map(scheduleMessage),
          nextPageToken: page.nextPageToken,
        });
      }),

    getSchedule: (req, ctx) =>
      guard("GetSchedule", async () => {
        const tenant = tenantOf(ctx);
        checkId(req.scheduleId);
        return scheduleMessage(await mustGet(tenant, req.scheduleId));
      }),

    deleteSchedule: (req, ctx) =>
      guard("DeleteSchedule", async () => {
        const tenant = tenantOf(ctx);
        checkId(req.scheduleId);
        if (!(await schedules.delete(tenant, req.scheduleId))) throw notFound("schedule", req.scheduleId);
        log.info({ tenant, scheduleId: req.scheduleId }, "schedule deleted");
        return create(DeleteScheduleResponseSchema, {});
      }),

    pauseSchedule: (req, ctx) =>
      guard("PauseSchedule", async () => {
        const tenant = tenantOf(ctx);
        checkId(req.scheduleId);
        if (!(await schedules.pause(tenant, req.scheduleId))) throw notFound("schedule", req.scheduleId);
        return scheduleMessage(await mustGet(tenant, req.scheduleId));
      }),

    resumeSchedule: (req, ctx) =>
      guard("ResumeSchedule", async () => {
        const tenant = tenantOf(ctx);
        checkId(req.scheduleId);
        if (!(await schedules.resume(tenant, req.scheduleId, now()))) throw notFound("schedule", req.scheduleId);
        return scheduleMessage(await mustGet(tenant, req.scheduleId));
      }),
  };
}

/** Registers the ScheduleService on a router. */
export function scheduleRoutes(deps: ScheduleServiceDeps): (router: ConnectRouter) => void {
  const impl = scheduleService(deps);
  return (router) => router.service(ScheduleService, impl);
}
