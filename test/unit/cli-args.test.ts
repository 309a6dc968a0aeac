import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Priority, TaskEventSchema, TaskSchema, TaskStatus, type TaskEvent } from "../../gen/taskmesh/v1/task_pb.js";
import {
  UsageError,
  parseDuration,
  parseInteger,
  parseJsonObject,
  parseLabels,
  parsePriority,
  parseRevision,
  parseStatus,
  readJsonObjectArg,
} from "../../cli/args.js";
import type { CommandContext } from "../../cli/command.js";
import { exitCodeForTask, followTask } from "../../cli/commands/tasks.js";
import { baseUrlFor, configFilePath, readConfigFile, resolveConnection, type GatewayClients } from "../../cli/connection.js";
import { ExitCode, errorLines, exitCodeFor, exitCodeForCode } from "../../cli/exit-codes.js";
import { Output, formatDurationMs, formatTable } from "../../cli/output.js";
import { ProgressBar, renderBar } from "../../cli/progress-bar.js";
import { parseInvocation, run, type Invocation } from "../../cli/run.js";

/** A stream that keeps what is written. */
function sink(isTTY = false): { write(s: string): boolean; text: string; isTTY: boolean; columns: number } {
  return {
    text: "",
    isTTY,
    columns: 80,
    write(s: string) {
      this.text += s;
      return true;
    },
  };
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), "taskmesh-cli-unit-"));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Runs the CLI in-process with no gateway configured (for what fails before any call). */
async function runCli(argv: string[], env: Record<string, string> = {}) {
  const stdout = sink();
  const stderr = sink();
  const code = await run(argv, {
    stdout,
    stderr,
    env: { TASKMESH_CONFIG: join(tmp, "absent.json"), ...env },
    home: tmp,
    readStdin: async () => '{"from":"stdin"}',
  });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

function command(inv: Invocation) {
  if (inv.kind !== "command") throw new Error(`expected a command, got ${inv.kind}`);
  return inv;
}

describe("durations", () => {
  it("reads milliseconds, seconds, minutes, hours, days, decimals and compounds", () => {
    expect(parseDuration("500ms", "--delay")).toBe(500);
    expect(parseDuration("5s", "--delay")).toBe(5000);
    expect(parseDuration("1.5s", "--delay")).toBe(1500);
    expect(parseDuration("1m30s", "--delay")).toBe(90_000);
    expect(parseDuration("2h", "--delay")).toBe(7_200_000);
    expect(parseDuration("1d2h", "--delay")).toBe(93_600_000);
    expect(parseDuration("1s250ms", "--delay")).toBe(1250);
    expect(parseDuration("0", "--delay")).toBe(0);
  });

  it("refuses bare numbers, negatives and unknown units, naming the flag", () => {
    for (const bad of ["5", "-1s", "5x", "", "1s2", "s", "1.s", "5 s"]) {
      expect(() => parseDuration(bad, "--timeout")).toThrow(UsageError);
    }
    expect(() => parseDuration("5", "--timeout")).toThrow(/^--timeout: expected a duration like 500ms, 5s/);
  });

  it("formats milliseconds compactly", () => {
    expect([850, 1500, 12_000, 125_000, 3_600_000, 3_840_000, 90_000_000].map(formatDurationMs)).toEqual([
      "850ms",
      "1.5s",
      "12s",
      "2m5s",
      "1h",
      "1h4m",
      "1d1h",
    ]);
  });
});

describe("labels, enums and numbers", () => {
  it("reads key=value pairs; the value may hold = or be empty", () => {
    expect(parseLabels(["a=1", "b=x=y", "c="], "--label")).toEqual({ a: "1", b: "x=y", c: "" });
    expect(parseLabels([], "--label")).toEqual({});
  });

  it("refuses a missing key, a missing = and a key given twice", () => {
    expect(() => parseLabels(["=v"], "--label")).toThrow('--label: expected key=value, got "=v"');
    expect(() => parseLabels(["novalue"], "--gray")).toThrow('--gray: expected key=value, got "novalue"');
    expect(() => parseLabels(["a=1", "a=2"], "--label")).toThrow('--label: key "a" given twice');
  });

  it("reads priorities and statuses in any case and spelling", () => {
    expect(["low", "Normal", "HIGH", "priority_critical"].map((p) => parsePriority(p))).toEqual([
      Priority.LOW,
      Priority.NORMAL,
      Priority.HIGH,
      Priority.CRITICAL,
    ]);
    expect(() => parsePriority("urgent")).toThrow("--priority: expected one of low, normal, high, critical");
    expect(["failed", "retry-wait", "TASK_STATUS_QUEUED", "canceled"].map((s) => parseStatus(s))).toEqual([
      TaskStatus.FAILED,
      TaskStatus.RETRY_WAIT,
      TaskStatus.QUEUED,
      TaskStatus.CANCELLED,
    ]);
    expect(() => parseStatus("done")).toThrow(UsageError);
  });

  it("reads bounded integers and int64 revisions", () => {
    expect(parseInteger("3", "--max-attempts", 1, 10)).toBe(3);
    expect(() => parseInteger("0", "--max-attempts", 1, 10)).toThrow("--max-attempts: must be between 1 and 10, got 0");
    expect(() => parseInteger("2.5", "--limit")).toThrow("--limit: expected a whole number");
    expect(parseRevision("9007199254740993", "revision")).toBe(9007199254740993n);
    expect(() => parseRevision("-1", "revision")).toThrow(UsageError);
    expect(() => parseRevision("99999999999999999999", "revision")).toThrow(UsageError);
  });
});

describe("JSON arguments", () => {
  it("accepts only objects", () => {
    expect(parseJsonObject('{"a":[1]}', "--payload")).toEqual({ a: [1] });
    expect(() => parseJsonObject("[1,2]", "--payload")).toThrow("--payload: expected a JSON object, got an array");
    expect(() => parseJsonObject("null", "--payload")).toThrow("got null");
    expect(() => parseJsonObject("{nope", "--payload")).toThrow(/^--payload: not valid JSON/);
  });

  it("reads @file and @- (stdin)", async () => {
    const file = join(tmp, "p.json");
    await writeFile(file, '{"x":1}');
    const stdin = async () => '{"y":2}';
    expect(await readJsonObjectArg(`@${file}`, "--payload", stdin)).toEqual({ x: 1 });
    expect(await readJsonObjectArg("@-", "--payload", stdin)).toEqual({ y: 2 });
    await expect(readJsonObjectArg(`@${join(tmp, "missing.json")}`, "--payload", stdin)).rejects.toThrow(
      /^--payload: cannot read .*missing\.json \(ENOENT\)$/,
    );
  });
});

describe("exit codes", () => {
  it("maps each gRPC code to the documented exit code", () => {
    expect(exitCodeForCode(Code.NotFound)).toBe(3);
    expect(exitCodeForCode(Code.Unauthenticated)).toBe(4);
    expect(exitCodeForCode(Code.PermissionDenied)).toBe(4);
    expect(exitCodeForCode(Code.Unavailable)).toBe(5);
    expect(exitCodeForCode(Code.DeadlineExceeded)).toBe(5);
    expect(exitCodeForCode(Code.InvalidArgument)).toBe(6);
    expect(exitCodeForCode(Code.Canceled)).toBe(130);
    for (const c of [Code.Internal, Code.FailedPrecondition, Code.Aborted, Code.ResourceExhausted, Code.Unknown]) {
      expect(exitCodeForCode(c)).toBe(7);
    }
  });

  it("maps usage errors to 2 and anything else to 7", () => {
    expect(exitCodeFor(new UsageError("x"))).toBe(ExitCode.USAGE);
    expect(exitCodeFor(new ConnectError("x", Code.NotFound))).toBe(ExitCode.NOT_FOUND);
    expect(exitCodeFor(new TypeError("boom"))).toBe(ExitCode.ERROR);
    expect(exitCodeFor("a string")).toBe(ExitCode.ERROR);
  });

  it("prints error: with the code name and each field violation, never a stack", () => {
    const bad = new ConnectError("payload: too big", Code.InvalidArgument, undefined, [
      { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [{ field: "payload", description: "too big" }] }) },
    ]);
    expect(errorLines(bad)).toEqual(["error: [invalid_argument] payload: too big", "  payload: too big"]);
    expect(errorLines(new Error("plain"))).toEqual(["error: plain"]);
  });
});

describe("command lines", () => {
  it("finds the command after global flags and takes flags anywhere after it", () => {
    const inv = command(
      parseInvocation(["--addr", "h:1", "--json", "submit", "noop", "--label", "a=1", "--watch", "--label", "b=2", "--queue=q"]),
    );
    expect(inv.spec.path).toEqual(["submit"]);
    expect(inv.args).toEqual(["noop"]);
    expect(inv.global).toEqual({ addr: "h:1", apiKey: undefined, json: true });
    expect(inv.flags.strings("label")).toEqual(["a=1", "b=2"]);
    expect(inv.flags.boolean("watch")).toBe(true);
    expect(inv.flags.string("queue")).toBe("q");
  });

  it("reads two-word commands and lets -- end the flags", () => {
    const inv = command(parseInvocation(["config", "set", "--gray", "canary=true", "worker", "--", "--not-a-flag"]));
    expect(inv.spec.path).toEqual(["config", "set"]);
    expect(inv.args).toEqual(["worker", "--not-a-flag"]);
    expect(inv.flags.strings("gray")).toEqual(["canary=true"]);
    expect(command(parseInvocation(["config", "watch"])).args).toEqual([]);
    expect(command(parseInvocation(["config", "watch", "a", "b", "c"])).args).toEqual(["a", "b", "c"]);
  });

  it("answers help and version", () => {
    expect(parseInvocation(["--version"])).toEqual({ kind: "version" });
    expect(parseInvocation(["ls", "--version"])).toEqual({ kind: "version" });
    const h = parseInvocation(["submit", "-h"]);
    expect(h).toMatchObject({ kind: "help", exitCode: 0, text: expect.stringContaining("Usage: taskmesh submit <type> [flags]") });
    expect(parseInvocation(["help", "config", "set"])).toMatchObject({ kind: "help", exitCode: 0, text: expect.stringContaining("--expected-revision N") });
    expect(parseInvocation(["config", "--help"])).toMatchObject({ kind: "help", exitCode: 0, text: expect.stringContaining("config rollback") });
    // A group without its command, or nothing at all: the help, as a usage error.
    expect(parseInvocation(["keys"])).toMatchObject({ kind: "help", exitCode: 2, text: expect.stringContaining("keys revoke") });
    expect(parseInvocation([])).toMatchObject({ kind: "help", exitCode: 2, text: expect.stringContaining("Exit codes:") });
  });

  it("refuses unknown commands and flags, missing values and wrong argument counts", () => {
    expect(() => parseInvocation(["nope"])).toThrow('unknown command "nope"');
    expect(() => parseInvocation(["config", "nope"])).toThrow('unknown command "config nope"');
    expect(() => parseInvocation(["ls", "--bogus"])).toThrow("Unknown option '--bogus'");
    expect(() => parseInvocation(["submit", "noop", "--queue"])).toThrow("Option '--queue <value>' argument missing");
    expect(() => parseInvocation(["get"])).toThrow("missing arguments: taskmesh get <task-id>");
    expect(() => parseInvocation(["get", "a", "b"])).toThrow('unexpected argument "b"');
    expect(() => parseInvocation(["--queue", "q", "submit", "noop"])).toThrow(UsageError);
  });
});

describe("connection settings", () => {
  it("takes flags over the environment over the config file over the default", () => {
    const file = { addr: "file:1", apiKey: "kf" };
    const env = { TASKMESH_ADDR: "env:2", TASKMESH_API_KEY: "ke" };
    expect(resolveConnection({ flags: { addr: "flag:3", apiKey: "kx" }, env, file })).toEqual({ baseUrl: "http://flag:3", apiKey: "kx" });
    expect(resolveConnection({ flags: {}, env, file })).toEqual({ baseUrl: "http://env:2", apiKey: "ke" });
    expect(resolveConnection({ flags: {}, env: { TASKMESH_ADDR: "" }, file })).toEqual({ baseUrl: "http://file:1", apiKey: "kf" });
    expect(resolveConnection({ flags: {}, env: {}, file: {} })).toEqual({ baseUrl: "http://127.0.0.1:8080", apiKey: undefined });
  });

  it("accepts host:port and http(s) URLs only", () => {
    expect(baseUrlFor("https://gw.example:443/")).toBe("https://gw.example:443");
    expect(() => baseUrlFor("ftp://x")).toThrow(UsageError);
    expect(() => baseUrlFor("bad host:1")).toThrow(UsageError);
  });

  it("finds the config file through TASKMESH_CONFIG, XDG_CONFIG_HOME or the home directory", async () => {
    expect(configFilePath({ TASKMESH_CONFIG: "/x/c.json" }, "/home/u")).toBe("/x/c.json");
    expect(configFilePath({ XDG_CONFIG_HOME: "/xdg" }, "/home/u")).toBe("/xdg/taskmesh/config.json");
    expect(configFilePath({}, "/home/u")).toBe("/home/u/.config/taskmesh/config.json");
    expect(await readConfigFile(join(tmp, "absent.json"))).toEqual({});
    const bad = join(tmp, "bad.json");
    await writeFile(bad, '{"addr": 5}');
    await expect(readConfigFile(bad)).rejects.toThrow(`config file ${bad}: "addr" must be a string`);
  });
});

describe("taskmesh in-process, before any call", () => {
  it("exits 2 with error: lines and a pointer to the help for bad values", async () => {
    const cases: [string[], RegExp][] = [
      [["submit", "noop", "--priority", "urgent"], /^error: --priority: expected one of/],
      [["submit", "noop", "--payload", "[1]"], /^error: --payload: expected a JSON object, got an array/],
      [["submit", "noop", "--delay", "5"], /^error: --delay: expected a duration/],
      [["schedules", "create", "--cron", "* * * * *", "--every", "1s", "noop"], /^error: give exactly one of --cron and --every/],
      [["keys", "create", "--scope", "admin"], /^error: --tenant is required/],
      [["config", "rollback", "ns", "x"], /^error: revision: expected a revision number/],
      [["ls", "--status", "done"], /^error: --status: expected one of queued/],
    ];
    for (const [argv, message] of cases) {
      const r = await runCli(argv);
      expect(r.code, argv.join(" ")).toBe(2);
      expect(r.stdout).toBe("");
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/\nrun `taskmesh .*--help` for usage\n$/);
    }
  });

  it("exits 2 for a malformed config file, naming it", async () => {
    const bad = join(tmp, "broken.json");
    await writeFile(bad, "{not json");
    const r = await runCli(["workers"], { TASKMESH_CONFIG: bad });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`error: config file ${bad}: not valid JSON`);
  });

  it("prints the help with the exit codes, and the version", async () => {
    const help = await runCli(["--help"]);
    expect(help.code).toBe(0);
    for (const line of [/^\s+0 {2}success$/m, /^\s+1 {2}the task ended FAILED or CANCELLED/m, /^\s+6 {2}invalid argument/m, /^\s+7 {2}any other error$/m]) {
      expect(help.stdout).toMatch(line);
    }
    expect(await runCli(["--version"])).toEqual({ code: 0, stdout: "taskmesh 0.1.0\n", stderr: "" });
    const none = await runCli([]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("Usage: taskmesh <command>");
  });
});

describe("output", () => {
  it("aligns table columns two spaces apart", () => {
    expect(formatTable(["ID", "STATUS"], [["a", "QUEUED"], ["long-id", "RUNNING"]])).toEqual([
      "ID       STATUS",
      "a        QUEUED",
      "long-id  RUNNING",
    ]);
  });

  it("renders a bar of fixed width, clamped to 0-100", () => {
    expect(renderBar(50, 10, "half")).toBe("[#####-----]  50%  half");
    expect(renderBar(150, 4)).toBe("[####] 100%");
    expect(renderBar(-3, 4)).toBe("[----]   0%");
  });

  it("prints one line per change when not on a terminal", () => {
    const s = sink(false);
    const bar = new ProgressBar(s, { width: 4 });
    bar.update(0);
    bar.update(0);
    bar.update(50, "half");
    bar.log("a note");
    bar.update(100, "done");
    bar.finish();
    expect(s.text).toBe("[----]   0%\n[##--]  50%  half\na note\n[####] 100%  done\n");
  });

  it("redraws one line on a terminal and keeps notes above it", () => {
    const s = sink(true);
    const bar = new ProgressBar(s, { width: 4 });
    bar.update(25);
    bar.log("RUNNING");
    bar.update(100);
    bar.finish();
    expect(s.text).toBe("\r[#---]  25%\x1b[K\r\x1b[KRUNNING\n\r[#---]  25%\x1b[K\r[####] 100%\x1b[K\n");
  });
});

describe("following a task", () => {
  const event = (sequence: number, status: TaskStatus, progress = 0): TaskEvent =>
    create(TaskEventSchema, {
      taskId: "t",
      sequence: BigInt(sequence),
      event: { case: "progress", value: { attempt: 1, progress } },
      task: create(TaskSchema, { id: "t", status, progress }),
    });

  /** A context whose WatchTask streams play `scripts` in turn (an Error item is thrown). */
  function context(scripts: (TaskEvent | Error)[][]): { ctx: CommandContext; calls: () => number } {
    let calls = 0;
    const tasks = {
      async *watchTask() {
        const script = scripts[calls++] ?? [];
        for (const item of script) {
          if (item instanceof Error) throw item;
          yield item;
        }
      },
      async getTask() {
        return create(TaskSchema, { id: "t", status: TaskStatus.RUNNING });
      },
    };
    const ctx: CommandContext = {
      out: new Output(sink(), sink(), false, true),
      clients: async () => ({ tasks }) as unknown as GatewayClients, // only the methods used here
      signal: new AbortController().signal,
      readStdin: async () => "",
      now: () => 0,
      sleep: async () => undefined,
    };
    return { ctx, calls: () => calls };
  }

  it("resumes a broken watch, skipping the events it already saw, and ends with the last snapshot", async () => {
    const { ctx, calls } = context([
      [event(1, TaskStatus.QUEUED), event(2, TaskStatus.RUNNING, 50), new ConnectError("reset", Code.Unavailable)],
      // The replay starts from the beginning again; a history may hold an earlier terminal state.
      [event(1, TaskStatus.QUEUED), event(2, TaskStatus.RUNNING, 50), event(3, TaskStatus.FAILED), event(4, TaskStatus.QUEUED), event(5, TaskStatus.SUCCEEDED, 100)],
    ]);
    const seen: bigint[] = [];
    const final = await followTask(ctx, "t", (ev) => seen.push(ev.sequence));
    expect(seen).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(final.status).toBe(TaskStatus.SUCCEEDED);
    expect(exitCodeForTask(final)).toBe(0);
    expect(calls()).toBe(2);
  });

  it("gives up after repeated failures and does not retry errors of the request itself", async () => {
    const down = new ConnectError("down", Code.Unavailable);
    const many = context(Array.from({ length: 10 }, () => [down]));
    await expect(followTask(many.ctx, "t", () => undefined)).rejects.toMatchObject({ code: Code.Unavailable });
    expect(many.calls()).toBe(6);
    const missing = context([[new ConnectError("task not found", Code.NotFound)]]);
    await expect(followTask(missing.ctx, "t", () => undefined)).rejects.toMatchObject({ code: Code.NotFound });
    expect(missing.calls()).toBe(1);
  });
});
