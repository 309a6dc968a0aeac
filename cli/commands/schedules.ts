/** Schedule commands (`taskmesh schedules …`): recurring tasks on a cron expression or an interval. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  DeleteScheduleResponseSchema,
  ListSchedulesResponseSchema,
  ScheduleSchema,
  type CreateScheduleRequestSchema,
  type Schedule,
} from "../../gen/taskmesh/v1/schedule_service_pb.js";
import { UsageError, parseDuration, parseInteger } from "../args.js";
import { arg, callOptions, type CommandContext, type CommandSpec } from "../command.js";
import { ExitCode } from "../exit-codes.js";
import { compactJson, formatDuration, formatFields, formatLabels, formatRelative, formatTimestamp, priorityName, type Output } from "../output.js";
import { TASK_FLAGS, taskRequestFromFlags } from "./tasks.js";

/** `cron "0 * * * *" (Europe/Berlin)` or `every 30s`. */
export function formatSpec(s: Schedule): string {
  switch (s.spec.case) {
    case "cron":
      return `cron ${JSON.stringify(s.spec.value)}${s.timeZone !== "" ? ` (${s.timeZone})` : ""}`;
    case "interval":
      return `every ${formatDuration(s.spec.value)}`;
    case undefined:
      return "-";
  }
}

function describeSchedule(out: Output, s: Schedule, now: number): string[] {
  const t = s.task;
  const fields: [string, string][] = [
    ["id", s.id],
    ["spec", formatSpec(s)],
    ["paused", s.paused ? out.out("yellow", "yes") : "no"],
    ["next run", s.paused ? "-" : `${formatTimestamp(s.nextRunAt)} (${formatRelative(s.nextRunAt, now)})`],
    ["last run", `${formatTimestamp(s.lastRunAt)}${s.lastRunAt !== undefined ? ` (${formatRelative(s.lastRunAt, now)})` : ""}`],
    ["last task", s.lastTaskId === "" ? "-" : s.lastTaskId],
    ["created", formatTimestamp(s.createdAt)],
  ];
  if (s.tenant !== "") fields.push(["tenant", s.tenant]);
  if (t !== undefined) {
    fields.push(["task type", t.type], ["task queue", t.queue === "" ? "default" : t.queue], ["task priority", priorityName(t.priority)]);
    if (Object.keys(t.labels).length > 0) fields.push(["task labels", formatLabels(t.labels)]);
    fields.push(["task payload", compactJson(t.payload, 200)]);
  }
  return formatFields(fields);
}

function printSchedule(ctx: CommandContext, s: Schedule): void {
  if (ctx.out.json) ctx.out.printJson(ScheduleSchema, s);
  else ctx.out.print(...describeSchedule(ctx.out, s, ctx.now()));
}

const createSchedule: CommandSpec = {
  path: ["schedules", "create"],
  args: "(--cron EXPR [--tz ZONE] | --every DURATION) <type>",
  summary: "enqueue a task of <type> on every tick of --cron or --every",
  details:
    'Either --cron "0 9 * * 1-5" (5 fields, or 6 with seconds first, or @hourly…; in --tz, default UTC)\n' +
    "or --every 30s. The task flags are those of submit.",
  flags: {
    cron: { type: "string", value: "EXPR", description: "a cron expression" },
    tz: { type: "string", value: "ZONE", description: "the IANA time zone of --cron, e.g. Europe/Berlin (default UTC)" },
    every: { type: "string", value: "DURATION", description: "a fixed interval, e.g. 30s" },
    id: { type: "string", value: "ID", description: "choose the schedule's id (default: generated)" },
    ...TASK_FLAGS,
    delay: { type: "string", value: "DURATION", description: "start each task this long after its tick" },
  },
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args, flags) {
    const cron = flags.string("cron");
    const every = flags.string("every");
    const tz = flags.string("tz");
    const usage = ["schedules", "create"];
    if ((cron === undefined) === (every === undefined)) throw new UsageError("give exactly one of --cron and --every", usage);
    if (tz !== undefined && cron === undefined) throw new UsageError("--tz applies to --cron only", usage);
    const spec: MessageInitShape<typeof CreateScheduleRequestSchema>["spec"] =
      cron !== undefined
        ? { case: "cron", value: cron }
        : { case: "interval", value: durationFromMs(parseDuration(every ?? "", "--every")) };
    const task = await taskRequestFromFlags(ctx, arg(args, 0), flags);
    const { schedules } = await ctx.clients();
    const s = await schedules.createSchedule(
      { spec, timeZone: tz ?? "", task, scheduleId: flags.string("id") ?? "" },
      callOptions(ctx),
    );
    if (ctx.out.json) ctx.out.printJson(ScheduleSchema, s);
    else ctx.out.print(s.id);
    return ExitCode.OK;
  },
};

const list: CommandSpec = {
  path: ["schedules", "ls"],
  args: "",
  summary: "list schedules",
  flags: {
    limit: { type: "string", value: "N", description: "at most N schedules (the page size)" },
    "page-token": { type: "string", value: "TOKEN", description: "the page after a previous listing" },
  },
  minArgs: 0,
  maxArgs: 0,
  async run(ctx, _args, flags) {
    const limit = flags.string("limit");
    const { schedules } = await ctx.clients();
    const res = await schedules.listSchedules(
      { pageSize: limit === undefined ? 0 : parseInteger(limit, "--limit", 1, 10_000), pageToken: flags.string("page-token") ?? "" },
      callOptions(ctx),
    );
    const { out } = ctx;
    if (out.json) {
      out.printJson(ListSchedulesResponseSchema, res);
      return ExitCode.OK;
    }
    const now = ctx.now();
    out.table(
      ["ID", "SPEC", "TYPE", "PAUSED", "NEXT RUN", "LAST TASK"],
      res.schedules.map((s) => [
        s.id,
        formatSpec(s),
        s.task?.type ?? "-",
        s.paused ? "yes" : "no",
        s.paused ? "-" : formatRelative(s.nextRunAt, now),
        s.lastTaskId === "" ? "-" : s.lastTaskId,
      ]),
      "no schedules",
    );
    if (res.nextPageToken !== "") out.note(`more: --page-token ${res.nextPageToken}`);
    return ExitCode.OK;
  },
};

const get: CommandSpec = {
  path: ["schedules", "get"],
  args: "<schedule-id>",
  summary: "show a schedule",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { schedules } = await ctx.clients();
    printSchedule(ctx, await schedules.getSchedule({ scheduleId: arg(args, 0) }, callOptions(ctx)));
    return ExitCode.OK;
  },
};

const del: CommandSpec = {
  path: ["schedules", "delete"],
  args: "<schedule-id>",
  summary: "delete a schedule (tasks it enqueued stay)",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { schedules } = await ctx.clients();
    const res = await schedules.deleteSchedule({ scheduleId: arg(args, 0) }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(DeleteScheduleResponseSchema, res);
    else ctx.out.print(`${arg(args, 0)}: deleted`);
    return ExitCode.OK;
  },
};

const pause: CommandSpec = {
  path: ["schedules", "pause"],
  args: "<schedule-id>",
  summary: "stop enqueueing until resumed",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { schedules } = await ctx.clients();
    printSchedule(ctx, await schedules.pauseSchedule({ scheduleId: arg(args, 0) }, callOptions(ctx)));
    return ExitCode.OK;
  },
};

const resume: CommandSpec = {
  path: ["schedules", "resume"],
  args: "<schedule-id>",
  summary: "enqueue again from the next tick",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { schedules } = await ctx.clients();
    printSchedule(ctx, await schedules.resumeSchedule({ scheduleId: arg(args, 0) }, callOptions(ctx)));
    return ExitCode.OK;
  },
};

/** The `schedules` commands. */
export const scheduleCommands: readonly CommandSpec[] = [createSchedule, list, get, del, pause, resume];
