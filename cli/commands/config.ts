/** Configuration commands (`taskmesh config …`, scope admin): read, write, watch, history, rollback, gray releases. */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AbandonGrayConfigResponseSchema,
  ConfigEntrySchema,
  ConfigEvent_Type,
  ConfigEventSchema,
  DeleteConfigResponseSchema,
  GetConfigHistoryResponseSchema,
  ListConfigsResponseSchema,
  type ConfigEntry,
  type ConfigEvent,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { parseLabels, parseRevision, readJsonObjectArg } from "../args.js";
import { arg, backoffMs, callOptions, type CommandContext, type CommandSpec } from "../command.js";
import { ExitCode } from "../exit-codes.js";
import { compactJson, formatFields, formatLabels, formatRelative, formatTimestamp, type Output } from "../output.js";

function grayTag(e: ConfigEntry): string {
  return Object.keys(e.grayLabels).length > 0 ? ` (gray: ${formatLabels(e.grayLabels)})` : "";
}

function describeEntry(out: Output, e: ConfigEntry, now: number): string[] {
  const fields: [string, string][] = [
    ["namespace", e.namespace],
    ["revision", String(e.revision)],
    ["updated", `${formatTimestamp(e.updatedAt)} (${formatRelative(e.updatedAt, now)})`],
    ["author", e.author === "" ? "-" : e.author],
  ];
  if (Object.keys(e.grayLabels).length > 0) fields.push(["gray labels", out.out("yellow", formatLabels(e.grayLabels))]);
  return [...formatFields(fields), "value:", ...JSON.stringify(e.value ?? {}, null, 2).split("\n").map((l) => `  ${l}`)];
}

/** Prints an entry returned by a write: `--json` the entry, else one line. */
function printWritten(ctx: CommandContext, e: ConfigEntry, what: string): void {
  if (ctx.out.json) ctx.out.printJson(ConfigEntrySchema, e);
  else ctx.out.print(`${e.namespace}: ${what} revision ${e.revision}${grayTag(e)}`);
}

const get: CommandSpec = {
  path: ["config", "get"],
  args: "<namespace>",
  summary: "show a namespace's document",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { config } = await ctx.clients();
    const e = await config.getConfig({ namespace: arg(args, 0) }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(ConfigEntrySchema, e);
    else ctx.out.print(...describeEntry(ctx.out, e, ctx.now()));
    return ExitCode.OK;
  },
};

const set: CommandSpec = {
  path: ["config", "set"],
  args: "<namespace> <json|@file>",
  summary: "store a namespace's document (validated by the config service)",
  details:
    "The document is a JSON object, @file, or @- for stdin. --expected-revision makes the write a\n" +
    "compare-and-set (0: only if the namespace has no document yet). --gray stores it as a gray\n" +
    "release applied only by instances carrying all the labels; promote or abandon it later.",
  flags: {
    "expected-revision": { type: "string", value: "N", description: "write only if the current revision is N" },
    gray: { type: "string", multiple: true, value: "K=V", description: "store as a gray release for instances with this label (repeatable)" },
  },
  minArgs: 2,
  maxArgs: 2,
  async run(ctx, args, flags) {
    const value = await readJsonObjectArg(arg(args, 1), "document", ctx.readStdin);
    const expected = flags.string("expected-revision");
    const grayLabels = parseLabels(flags.strings("gray"), "--gray");
    const { config } = await ctx.clients();
    const e = await config.putConfig(
      {
        namespace: arg(args, 0),
        value,
        grayLabels,
        ...(expected !== undefined ? { expectedRevision: parseRevision(expected, "--expected-revision") } : {}),
      },
      callOptions(ctx),
    );
    printWritten(ctx, e, "stored as");
    return ExitCode.OK;
  },
};

const del: CommandSpec = {
  path: ["config", "delete"],
  args: "<namespace>",
  summary: "delete a namespace's document (and its gray release)",
  flags: { "expected-revision": { type: "string", value: "N", description: "delete only if the current revision is N" } },
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args, flags) {
    const expected = flags.string("expected-revision");
    const { config } = await ctx.clients();
    const res = await config.deleteConfig(
      {
        namespace: arg(args, 0),
        ...(expected !== undefined ? { expectedRevision: parseRevision(expected, "--expected-revision") } : {}),
      },
      callOptions(ctx),
    );
    if (ctx.out.json) ctx.out.printJson(DeleteConfigResponseSchema, res);
    else ctx.out.print(`${arg(args, 0)}: deleted`);
    return ExitCode.OK;
  },
};

const ls: CommandSpec = {
  path: ["config", "ls"],
  args: "[prefix]",
  summary: "list the namespaces' documents",
  flags: {},
  minArgs: 0,
  maxArgs: 1,
  async run(ctx, args) {
    const { config } = await ctx.clients();
    const res = await config.listConfigs({ prefix: args[0] ?? "" }, callOptions(ctx));
    const { out } = ctx;
    if (out.json) {
      out.printJson(ListConfigsResponseSchema, res);
      return ExitCode.OK;
    }
    const now = ctx.now();
    out.table(
      ["NAMESPACE", "REVISION", "UPDATED", "GRAY", "VALUE"],
      res.entries.map((e) => [e.namespace, String(e.revision), formatRelative(e.updatedAt, now), formatLabels(e.grayLabels), compactJson(e.value, 60)]),
      "no configuration",
    );
    return ExitCode.OK;
  },
};

/** One line per change: time, PUT or DELETE, namespace, revision, gray labels, value. */
function formatConfigEvent(ev: ConfigEvent, now: number): string {
  const e = ev.entry;
  // A deletion carries no time of its own: show when it arrived.
  const time = (e?.updatedAt !== undefined ? formatTimestamp(e.updatedAt) : new Date(now).toISOString()).slice(11, 23);
  const type = ev.type === ConfigEvent_Type.DELETE ? "DELETE" : "PUT   ";
  if (e === undefined) return `${time}  ${type}`;
  const value = ev.type === ConfigEvent_Type.DELETE ? "" : `  ${compactJson(e.value ?? {}, 200)}`;
  return `${time}  ${type}  ${e.namespace}  rev ${e.revision}${grayTag(e)}${value}`;
}

const WATCH_RECONNECTS = 5;

const watch: CommandSpec = {
  path: ["config", "watch"],
  args: "[namespace...]",
  summary: "print the current documents, then every change, until Ctrl-C",
  details:
    "No namespaces: all of them. One line per change (--json: one ConfigEvent per line, including the\n" +
    "UNSPECIFIED events that only report the revision reached). A broken stream is resumed after the last\n" +
    "revision seen. Ends with exit code 130 on Ctrl-C.",
  flags: {
    "from-revision": { type: "string", value: "N", description: "skip the current documents; print changes after revision N" },
  },
  minArgs: 0,
  maxArgs: Infinity,
  async run(ctx, args, flags) {
    const from = flags.string("from-revision");
    let fromRevision = from === undefined ? 0n : parseRevision(from, "--from-revision");
    const { config } = await ctx.clients();
    let failures = 0;
    let resumed = false;
    for (;;) {
      try {
        for await (const ev of config.watchConfig({ namespaces: [...args], fromRevision }, { signal: ctx.signal })) {
          failures = 0;
          const rev = ev.entry?.revision ?? 0n;
          if (rev > fromRevision) fromRevision = rev;
          if (ctx.out.json) ctx.out.printJsonLine(ConfigEventSchema, ev);
          // UNSPECIFIED events only mark progress ("everything up to this revision was sent").
          else if (ev.type !== ConfigEvent_Type.UNSPECIFIED) ctx.out.print(formatConfigEvent(ev, ctx.now()));
        }
        resumed = true;
      } catch (err) {
        if (ctx.signal.aborted || !(err instanceof ConnectError)) throw err;
        if (err.code === Code.OutOfRange && resumed) {
          // The revision to resume after was compacted away: start over from the current documents.
          fromRevision = 0n;
        } else if (err.code !== Code.Unavailable && err.code !== Code.Aborted) {
          throw err;
        }
        resumed = true;
      }
      if (++failures > WATCH_RECONNECTS) throw new ConnectError("lost the configuration watch", Code.Unavailable);
      await ctx.sleep(backoffMs(failures));
    }
  },
};

const history: CommandSpec = {
  path: ["config", "history"],
  args: "<namespace>",
  summary: "list a namespace's past versions, newest first",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { config } = await ctx.clients();
    const res = await config.getConfigHistory({ namespace: arg(args, 0) }, callOptions(ctx));
    const { out } = ctx;
    if (out.json) {
      out.printJson(GetConfigHistoryResponseSchema, res);
      return ExitCode.OK;
    }
    out.table(
      ["REVISION", "UPDATED", "AUTHOR", "GRAY", "VALUE"],
      res.entries.map((e) => [
        String(e.revision),
        formatTimestamp(e.updatedAt),
        e.author === "" ? "-" : e.author,
        formatLabels(e.grayLabels),
        e.value === undefined ? "(deleted)" : compactJson(e.value, 60),
      ]),
      "no history",
    );
    return ExitCode.OK;
  },
};

const rollback: CommandSpec = {
  path: ["config", "rollback"],
  args: "<namespace> <revision>",
  summary: "store a past version again as the newest one",
  flags: {},
  minArgs: 2,
  maxArgs: 2,
  async run(ctx, args) {
    const toRevision = parseRevision(arg(args, 1), "revision");
    const { config } = await ctx.clients();
    const e = await config.rollbackConfig({ namespace: arg(args, 0), toRevision }, callOptions(ctx));
    printWritten(ctx, e, `revision ${toRevision} restored as`);
    return ExitCode.OK;
  },
};

const promote: CommandSpec = {
  path: ["config", "promote"],
  args: "<namespace>",
  summary: "make a namespace's gray release the document everyone applies",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { config } = await ctx.clients();
    const e = await config.promoteGrayConfig({ namespace: arg(args, 0) }, callOptions(ctx));
    printWritten(ctx, e, "gray release promoted as");
    return ExitCode.OK;
  },
};

const abandon: CommandSpec = {
  path: ["config", "abandon"],
  args: "<namespace>",
  summary: "drop a namespace's gray release",
  flags: {},
  minArgs: 1,
  maxArgs: 1,
  async run(ctx, args) {
    const { config } = await ctx.clients();
    const res = await config.abandonGrayConfig({ namespace: arg(args, 0) }, callOptions(ctx));
    if (ctx.out.json) ctx.out.printJson(AbandonGrayConfigResponseSchema, res);
    else ctx.out.print(`${arg(args, 0)}: gray release abandoned`);
    return ExitCode.OK;
  },
};

/** The `config` commands. */
export const configCommands: readonly CommandSpec[] = [get, set, watch, history, rollback, promote, abandon, ls, del];
