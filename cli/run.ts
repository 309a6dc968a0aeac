/**
 * The `taskmesh` runner: finds the command in argv, parses its flags (node:util parseArgs), runs it
 * and turns whatever it throws into `error: …` on stderr and an exit code. It takes its streams and
 * environment as arguments so tests can run it in-process.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { VERSION } from "../lib/version.js";
import { UsageError } from "./args.js";
import { Flags, type CommandContext, type CommandSpec, type FlagSpec } from "./command.js";
import { COMMANDS, SECTIONS } from "./commands/index.js";
import {
  configFilePath,
  createGatewayClients,
  readConfigFile,
  resolveConnection,
  type GatewayClients,
} from "./connection.js";
import { ExitCode, errorLines, exitCodeFor } from "./exit-codes.js";
import { GLOBAL_FLAGS, commandHelp, groupHelp, mainHelp } from "./help.js";
import { Output, type OutputStream } from "./output.js";

/** The global flag values every command sees. */
export interface GlobalValues {
  addr: string | undefined;
  apiKey: string | undefined;
  json: boolean;
}

/** What argv asks for. */
export type Invocation =
  | { kind: "help"; text: string; exitCode: 0 | 2 }
  | { kind: "version" }
  | { kind: "command"; spec: CommandSpec; args: string[]; flags: Flags; global: GlobalValues };

interface Node {
  spec?: CommandSpec;
  children: Map<string, Node>;
}

function commandTree(): Node {
  const root: Node = { children: new Map() };
  for (const c of COMMANDS) {
    let n = root;
    for (const w of c.path) {
      let next = n.children.get(w);
      if (next === undefined) {
        next = { children: new Map() };
        n.children.set(w, next);
      }
      n = next;
    }
    n.spec = c;
  }
  return root;
}

/** The global flag a token names (`--addr`, `--addr=x`, `-h`), if it is one. */
function globalFlagOf(token: string): FlagSpec | undefined {
  if (token.startsWith("--")) return GLOBAL_FLAGS[token.slice(2).split("=", 1)[0] ?? ""];
  return Object.values(GLOBAL_FLAGS).find((f) => f.short !== undefined && token === `-${f.short}`);
}

function parseArgsOptions(flags: Readonly<Record<string, FlagSpec>>): NonNullable<ParseArgsConfig["options"]> {
  const out: NonNullable<ParseArgsConfig["options"]> = {};
  for (const [name, f] of Object.entries(flags)) {
    out[name] = { type: f.type, ...(f.multiple === true ? { multiple: true } : {}), ...(f.short !== undefined ? { short: f.short } : {}) };
  }
  return out;
}

/** Runs parseArgs, turning its errors into UsageErrors with their first sentence. */
function parseFlags(
  argv: readonly string[],
  flags: Readonly<Record<string, FlagSpec>>,
  path: readonly string[],
): { values: Flags; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      options: parseArgsOptions(flags),
      allowPositionals: true,
      strict: true,
    });
    return { values: new Flags(values), positionals };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS")) {
      const msg = (err as Error).message;
      const first = msg.split(/\.\s/, 1)[0] ?? msg;
      throw new UsageError(first.replace(/\.$/, ""), path);
    }
    throw err;
  }
}

function globalsOf(f: Flags): GlobalValues {
  return { addr: f.string("addr"), apiKey: f.string("api-key"), json: f.boolean("json") };
}

/**
 * Works out what argv asks for. Command words come first (global flags may precede them); the
 * rest is the command's flags and positional arguments, in any order (`--` ends flags).
 * @throws UsageError for unknown commands or flags, malformed flags and wrong argument counts
 */
export function parseInvocation(argv: readonly string[]): Invocation {
  const root = commandTree();
  let node = root;
  const path: string[] = [];
  const words = new Set<number>();
  let helpWord = false;
  for (let i = 0; i < argv.length; i++) {
    const t = argv[i] ?? "";
    if (t === "--") break;
    if (t.startsWith("-") && t.length > 1) {
      const g = globalFlagOf(t);
      if (g === undefined) break; // a command's flag: the command words are over
      if (g.type === "string" && !t.includes("=")) i++;
      continue;
    }
    if (node.spec !== undefined) break;
    if (node === root && path.length === 0 && t === "help" && !helpWord) {
      helpWord = true;
      words.add(i);
      continue;
    }
    const child = node.children.get(t);
    if (child === undefined) {
      throw new UsageError(`unknown command ${JSON.stringify([...path, t].join(" "))}`, path);
    }
    path.push(t);
    words.add(i);
    node = child;
  }
  const rest = argv.filter((_, i) => !words.has(i));
  const spec = node.spec;
  if (spec === undefined) {
    const { values, positionals } = parseFlags(rest, GLOBAL_FLAGS, path);
    if (values.boolean("version")) return { kind: "version" };
    const section = SECTIONS.find((s) => s.group !== undefined && s.group === path[0]);
    const text = section !== undefined ? groupHelp(section) : mainHelp(VERSION);
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`, path);
    if (values.boolean("help") || helpWord) return { kind: "help", text, exitCode: 0 };
    return { kind: "help", text, exitCode: 2 };
  }
  const { values, positionals } = parseFlags(rest, { ...GLOBAL_FLAGS, ...spec.flags }, spec.path);
  if (values.boolean("help") || helpWord) return { kind: "help", text: commandHelp(spec), exitCode: 0 };
  if (values.boolean("version")) return { kind: "version" };
  if (positionals.length < spec.minArgs) {
    throw new UsageError(`missing arguments: taskmesh ${[...spec.path, spec.args].join(" ")}`, spec.path);
  }
  if (positionals.length > spec.maxArgs) {
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[spec.maxArgs])}`, spec.path);
  }
  return { kind: "command", spec, args: positionals, flags: values, global: globalsOf(values) };
}

/** What the CLI runs against: streams, environment, home directory, stdin, cancellation, clock. */
export interface CliIo {
  stdout: OutputStream;
  stderr: OutputStream;
  env: Readonly<Record<string, string | undefined>>;
  /** The user's home directory (for the config file). */
  home: string;
  /** Reads all of standard input. */
  readStdin(): Promise<string>;
  /** Aborted on Ctrl-C. */
  signal?: AbortSignal;
  /** @default Date.now */
  now?: () => number;
}

/** Runs `taskmesh` with `argv` (without the node and script paths); resolves with the exit code. */
export async function run(argv: readonly string[], io: CliIo): Promise<number> {
  const noColor = (io.env["NO_COLOR"] ?? "") !== "";
  let out = new Output(io.stdout, io.stderr, false, noColor);
  const signal = io.signal ?? new AbortController().signal;
  try {
    const inv = parseInvocation(argv);
    switch (inv.kind) {
      case "version":
        out.print(`taskmesh ${VERSION}`);
        return ExitCode.OK;
      case "help":
        (inv.exitCode === 0 ? io.stdout : io.stderr).write(inv.text);
        return inv.exitCode;
      case "command":
        break;
    }
    out = new Output(io.stdout, io.stderr, inv.global.json, noColor);
    let clients: Promise<GatewayClients> | undefined;
    const ctx: CommandContext = {
      out,
      signal,
      readStdin: io.readStdin,
      now: io.now ?? Date.now,
      // Not unref()ed like a service's background timer: waiting is what the command is doing, and
      // an unref()ed timer would let the process exit mid-command.
      sleep: (ms) => sleep(ms, undefined, { signal }),
      clients: () =>
        (clients ??= (async () => {
          const file = await readConfigFile(configFilePath(io.env, io.home));
          const settings = resolveConnection({ flags: { addr: inv.global.addr, apiKey: inv.global.apiKey }, env: io.env, file });
          return createGatewayClients(settings);
        })()),
    };
    return await inv.spec.run(ctx, inv.args, inv.flags);
  } catch (err) {
    if (signal.aborted) return ExitCode.INTERRUPTED;
    for (const l of errorLines(err)) out.note(l);
    if (err instanceof UsageError) {
      const path = err.command ?? [];
      out.note(`run \`${["taskmesh", ...path, "--help"].join(" ")}\` for usage`);
    }
    return exitCodeFor(err);
  }
}
