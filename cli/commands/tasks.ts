/**
 * Task commands: submit (optionally following the task with a progress bar), get, ls, cancel,
 * retry and watch.
 */
import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ListTasksResponseSchema,
  type ListTasksRequestSchema,
} from "../../gen/taskmesh/v1/task_service_pb.js";
import {
  SubmitTaskRequestSchema,
  TaskEventSchema,
  TaskSchema,
  TaskStatus,
  type SubmitTaskRequest,
  type Task,
  type TaskEvent,
} from "../../gen/taskmesh/v1/task_pb.js";
import {
  PRIORITY_NAMES,
  STATUS_NAMES,
  UsageError,
  parseDuration,
  parseInteger,
  parseLabel,
  parseLabels,
  parsePriority,
  parseStatus,
  readJsonObjectArg,
} from "../args.js";
import { arg, backoffMs, callOptions, type CommandContext, type CommandSpec, type FlagSpec, type Flags } from "../command.js";
import { ExitCode } from "../exit-codes.js";
import {
  compactJson,
  describeTask,
  formatDurationMs,
  formatRelative,
  formatTimestamp,
  isTerminal,
  paintStatus,
  priorityName,
  statusName,
} from "../output.js";
import { ProgressBar } from "../progress-bar.js";

/** Flags describing a task to run, shared by `submit` and `schedules create`. */
export const TASK_FLAGS: Readonly<Record<string, FlagSpec>> = {
  payload: { type: "string", value: "JSON|@file", description: "the task's payload: a JSON object, @file, or @- for stdin" },
  queue: { type: "string", value: "NAME", description: 'the queue (default "default")' },
  priority: { type: "string", value: PRIORITY_NAMES.join("|"), description: "the priority (default normal)" },
  "max-attempts": { type: "string", value: "N", description: "attempts including the first (default: the scheduler's, 3)" },
  timeout: { type: "string", value: "DURATION", description: "execution limit per attempt, e.g. 30s" },
  "affinity-key": { type: "string", value: "KEY", description: "tasks with the same key go to the same worker" },
  label: { type: "string", multiple: true, value: "K=V", description: "a label (repeatable)" },
};

/** Builds a SubmitTaskRequest from a type and the {@link TASK_FLAGS} (plus delay/idempotency when present). */
export async function taskRequestFromFlags(ctx: CommandContext, type: string, flags: Flags): Promise<SubmitTaskRequest> {
  if (type === "") throw new UsageError("the task type must not be empty");
  const payloadArg = flags.string("payload");
  const payload: JsonObject | undefined =
    payloadArg === undefined ? undefined : await readJsonObjectArg(payloadArg, "--payload", ctx.readStdin);
  const priority = flags.string("priority");
  const maxAttempts = flags.string("max-attempts");
  const timeout = flags.string("timeout");
  const delay = flags.string("delay");
  const labels = parseLabels(flags.strings("label"), "--label");
  return create(SubmitTaskRequestSchema, {
    type,
    ...(payload !== undefined ? { payload } : {}),
    queue: flags.string("queue") ?? "",
    ...(priority !== undefined ? { priority: parsePriority(priority) } : {}),
    ...(maxAttempts !== undefined ? { maxAttempts: parseInteger(maxAttempts, "--max-attempts", 1, 1000) } : {}),
    ...(timeout !== undefined ? { timeout: durationFromMs(parseDuration(timeout, "--timeout")) } : {}),
    ...(delay !== undefined ? { delay: durationFromMs(parseDuration(delay, "--delay")) } : {}),
    affinityKey: flags.string("affinity-key") ?? "",
    idempotencyKey: flags.string("idempotency-key") ?? "",
    labels,
  });
}

/** `HH:MM:SS.mmm` of an event, in UTC like the rest of the output. */
function eventTime(ev: TaskEvent): string {
  return ev.time === undefined ? "--:--:--.---" : formatTimestamp(ev.time).slice(11, 23);
}

/** What an event says, without time and sequence: `QUEUED → RUNNING  attempt 1 on w-1`. */
export function describeEvent(ev: TaskEvent, color: boolean, now: number): string {
  switch (ev.event.case) {
    case "statusChange": {
      const c = ev.event.value;
      const move = c.from === TaskStatus.UNSPECIFIED ? paintStatus(color, c.to) : `${statusName(c.from)} → ${paintStatus(color, c.to)}`;
      const parts = [move];
      if (c.attempt > 0) parts.push(`attempt ${c.attempt}${c.workerId !== "" ? ` on ${c.workerId}` : ""}`);
      if (c.error !== undefined && (c.error.code !== "" || c.error.message !== "")) {
        parts.push(`${c.error.code}: ${c.error.message}${c.error.retryable ? " (retryable)" : ""}`);
      }
      if (c.to === TaskStatus.RETRY_WAIT || c.to === TaskStatus.DELAYED) {
        const at = ev.task?.scheduledAt;
        if (at !== undefined) parts.push(`next run ${formatRelative(at, now)}`);
      }
      return parts.join("  ");
    }
    case "progress": {
      const p = ev.event.value;
      return `progress ${String(p.progress).padStart(3)}%${p.message !== "" ? `  ${p.message}` : ""}`;
    }
    case "log":
      return `log  ${ev.event.value.line}`;
    case undefined:
      return ev.task !== undefined ? paintStatus(color, ev.task.status) : "event";
  }
}

/** One line per event for `taskmesh watch`: time, sequence and what happened. */
export function formatEventLine(ev: TaskEvent, color: boolean, now: number): string {
  return `${eventTime(ev)}  #${ev.sequence}  ${describeEvent(ev, color, now)}`;
}

const WATCH_RECONNECTS = 5;
/** Stream errors after which watching again is worth it: the connection, not the request, failed. */
const RESUMABLE: ReadonlySet<Code> = new Set([Code.Unavailable, Code.Aborted]);

/**
 * Follows a task's events until the stream ends (after the terminal event) and returns the final
 * snapshot. WatchTask replays the history first, so after a broken stream (UNAVAILABLE, ABORTED) it
 * reconnects and skips the events already seen (by sequence); a stream that ends without a
 * terminal event is checked with GetTask.
 */
export async function followTask(ctx: CommandContext, taskId: string, onEvent: (ev: TaskEvent) => void): Promise<Task> {
  const { tasks } = await ctx.clients();
  let seen = 0n;
  let failures = 0;
  let last: Task | undefined;
  for (;;) {
    try {
      for await (const ev of tasks.watchTask({ taskId }, { signal: ctx.signal })) {
        if (ev.sequence <= seen) continue;
        seen = ev.sequence;
        failures = 0;
        if (ev.task !== undefined) last = ev.task;
        onEvent(ev);
      }
      // The stream ends after the terminal event. A replayed history may hold earlier terminal
      // events (a task retried after it failed), so only the last snapshot counts.
      if (last !== undefined && isTerminal(last.status)) return last;
      const now = await tasks.getTask({ taskId }, callOptions(ctx));
      if (isTerminal(now.status)) return now;
    } catch (err) {
      if (ctx.signal.aborted || !(err instanceof ConnectError) || !RESUMABLE.has(err.code)) throw err;
    }
    if (++failures > WATCH_RECONNECTS) {
      throw new ConnectError(`lost the watch of task ${taskId} before it finished`, Code.Unavailable);
    }
    await ctx.sleep(backoffMs(failures));
  }
}

/** The exit code for a task's final status: 0 if SUCCEEDED, 1 otherwise. */
export function exitCodeForTask(t: Task): number {
  return t.status === TaskStatus.SUCCEEDED ? ExitCode.OK : ExitCode.TASK_FAILED;
}

const submit: CommandSpec = {
  path: ["submit"],
  args: "<type>",
  summary: "submit a task (--watch follows it with a progress bar)",
  details:
    "Prints the new task's id (--json: the task). With --watch, draws a progress bar on stderr until the\n" +
    "task ends, then prints the finished task (result or error) on stdout; exit code 0 if it SUCCEEDED,\n" +
    "1 if it FAILED or was CANCELLED. Ctrl-C stops watching, not the task.",
  flags: {
    ...TASK_FLAGS,
    delay: { type: "string", value: "DURATION", description: "start no earlier than this from now, e.g. 5s" },
    "idempotency-key": { type: "string", value: "KEY", description: "the same key within 24 h returns the first task" },
    watch: { type: "boolean", short: "w", description: "follow the task to its end, then print it" },
  },
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args, flags) {
    const req = await taskRequestFromFlags(ctx, arg(args, 0), flags);
    const { tasks } = await ctx.clients();
    const task = await tasks.submitTask(req, callOptions(ctx));
    const { out } = ctx;
    if (!flags.boolean("watch")) {
      if (out.json) out.printJson(TaskSchema, task);
      else out.print(task.id);
      return ExitCode.OK;
    }
    const bar = out.json ? undefined : new ProgressBar(out.stderr, { color: out.colorErr });
    if (!out.json) out.note(`task ${task.id} submitted (${statusName(task.status)})`);
    let final: Task;
    try {
      final = await followTask(ctx, task.id, (ev) => {
        if (bar === undefined) return;
        // The first event (the task created) repeats what "submitted" said.
        const created = ev.event.case === "statusChange" && ev.event.value.from === TaskStatus.UNSPECIFIED;
        if ((ev.event.case === "statusChange" && !created) || ev.event.case === "log") {
          bar.log(describeEvent(ev, out.colorErr, ctx.now()));
        }
        const t = ev.task;
        if (t !== undefined && (t.status === TaskStatus.RUNNING || t.status === TaskStatus.SUCCEEDED || ev.event.case === "progress")) {
          bar.update(t.progress, t.progressMessage);
        }
      });
    } catch (err) {
      bar?.finish();
      if (ctx.signal.aborted) out.note(`stopped watching; task ${task.id} goes on`);
      throw err;
    }
    bar?.finish();
    if (out.json) out.printJson(TaskSchema, final);
    else out.print(...describeTask(final, ctx.now(), out.colorOut));
    return exitCodeForTask(final);
  },
};

const get: CommandSpec = {
  path: ["get"],
  args: "<task-id>",
  summary: "show a task, its result or error",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { tasks } = await ctx.clients();
    const t = await tasks.getTask({ taskId: arg(args, 0) }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(TaskSchema, t);
    else ctx.out.print(...describeTask(t, ctx.now(), ctx.out.colorOut));
    return ExitCode.OK;
  },
};

const ls: CommandSpec = {
  path: ["ls"],
  args: "",
  summary: "list tasks, newest first",
  details: "Prints the --page-token of the next page on stderr when there is one.",
  flags: {
    status: { type: "string", value: STATUS_NAMES.join("|"), description: "only tasks in this status" },
    type: { type: "string", value: "TYPE", description: "only tasks of this type" },
    queue: { type: "string", value: "NAME", description: "only tasks of this queue" },
    label: { type: "string", value: "K=V", description: "only tasks with this label" },
    limit: { type: "string", value: "N", description: "at most N tasks (the page size)" },
    "page-token": { type: "string", value: "TOKEN", description: "the page after a previous listing" },
  },
  minArgs: 0,
  maxArgs: 0,
  async run(ctx, _args, flags) {
    const status = flags.string("status");
    const label = flags.string("label");
    const limit = flags.string("limit");
    const req: MessageInitShape<typeof ListTasksRequestSchema> = {
      ...(status !== undefined ? { status: parseStatus(status) } : {}),
      type: flags.string("type") ?? "",
      queue: flags.string("queue") ?? "",
      label: label !== undefined ? parseLabel(label, "--label").join("=") : "",
      ...(limit !== undefined ? { pageSize: parseInteger(limit, "--limit", 1, 10_000) } : {}),
      pageToken: flags.string("page-token") ?? "",
    };
    const { tasks } = await ctx.clients();
    const res = await tasks.listTasks(req, callOptions(ctx));
    const { out } = ctx;
    if (out.json) {
      out.printJson(ListTasksResponseSchema, res);
      return ExitCode.OK;
    }
    const now = ctx.now();
    out.table(
      ["ID", "TYPE", "STATUS", "QUEUE", "PRIORITY", "ATTEMPT", "PROGRESS", "CREATED"],
      res.tasks.map((t) => [
        t.id,
        t.type,
        paintStatus(out.colorOut, t.status),
        t.queue,
        priorityName(t.priority),
        String(t.attempt),
        `${t.progress}%`,
        formatRelative(t.createdAt, now),
      ]),
      "no tasks",
    );
    if (res.nextPageToken !== "") out.note(`more: --page-token ${res.nextPageToken}`);
    return ExitCode.OK;
  },
};

const cancel: CommandSpec = {
  path: ["cancel"],
  args: "<task-id>",
  summary: "cancel a waiting task or abort a running one",
  details: "A finished task is returned unchanged. Prints the task's id and status afterwards.",
  flags: { reason: { type: "string", value: "TEXT", description: "why, recorded with the cancellation" } },
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args, flags) {
    const { tasks } = await ctx.clients();
    const t = await tasks.cancelTask({ taskId: arg(args, 0), reason: flags.string("reason") ?? "" }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(TaskSchema, t);
    else ctx.out.print(`${t.id} ${paintStatus(ctx.out.colorOut, t.status)}`);
    return ExitCode.OK;
  },
};

const retry: CommandSpec = {
  path: ["retry"],
  args: "<task-id>",
  summary: "re-queue a FAILED or CANCELLED task",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { tasks } = await ctx.clients();
    const t = await tasks.retryTask({ taskId: arg(args, 0) }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(TaskSchema, t);
    else ctx.out.print(`${t.id} ${paintStatus(ctx.out.colorOut, t.status)}`);
    return ExitCode.OK;
  },
};

const watch: CommandSpec = {
  path: ["watch"],
  args: "<task-id>",
  summary: "print a task's events (history first) until it ends",
  details:
    "One line per event (--json: one TaskEvent per line). Exit code 0 if the task SUCCEEDED, 1 if it\n" +
    "FAILED or was CANCELLED.",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { out } = ctx;
    const final = await followTask(ctx, arg(args, 0), (ev) => {
      if (out.json) out.printJsonLine(TaskEventSchema, ev);
      else out.print(formatEventLine(ev, out.colorOut, ctx.now()));
    });
    if (!out.json) {
      if (final.result !== undefined) out.print(`result: ${compactJson(final.result)}`);
      if (final.startedAt !== undefined && final.finishedAt !== undefined) {
        out.note(`ran ${formatDurationMs(timestampMs(final.finishedAt) - timestampMs(final.startedAt))}`);
      }
    }
    return exitCodeForTask(final);
  },
};

/** The task commands. */
export const taskCommands: readonly CommandSpec[] = [submit, get, ls, cancel, retry, watch];
