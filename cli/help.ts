/** The help texts of `taskmesh`: the command list, one command's flags, a group's commands. */
import type { CommandSpec, FlagSpec } from "./command.js";
import { SECTIONS, type CommandSection } from "./commands/index.js";
import { DEFAULT_ADDR } from "./connection.js";
import { EXIT_CODE_HELP } from "./exit-codes.js";

/** Flags every command takes. */
export const GLOBAL_FLAGS: Readonly<Record<string, FlagSpec>> = {
  addr: {
    type: "string",
    value: "HOST:PORT",
    description: `the gateway (or http(s)://URL); env TASKMESH_ADDR; default ${DEFAULT_ADDR}`,
  },
  "api-key": { type: "string", value: "KEY", description: "the API key; env TASKMESH_API_KEY" },
  json: { type: "boolean", description: "machine output: protobuf JSON, one object (one per line for streams)" },
  help: { type: "boolean", short: "h", description: "show help (taskmesh <command> --help)" },
  version: { type: "boolean", description: "print the version" },
};

function synopsis(c: CommandSpec): string {
  return ["taskmesh", ...c.path, c.args].filter((s) => s !== "").join(" ");
}

function flagLines(flags: Readonly<Record<string, FlagSpec>>): string[] {
  const rows = Object.entries(flags).map(([name, f]) => {
    const left = `${f.short !== undefined ? `-${f.short}, ` : "    "}--${name}${f.value !== undefined ? ` ${f.value}` : ""}`;
    return [left, f.description + (f.multiple === true && !f.description.includes("repeatable") ? " (repeatable)" : "")] as const;
  });
  const w = Math.max(0, ...rows.map(([l]) => l.length));
  return rows.map(([l, d]) => `  ${l.padEnd(w)}  ${d}`);
}

function commandList(commands: readonly CommandSpec[]): string[] {
  const rows = commands.map((c) => [[...c.path, c.args].filter((s) => s !== "").join(" "), c.summary] as const);
  const w = Math.max(0, ...rows.map(([l]) => l.length));
  return rows.map(([l, d]) => `  ${l.padEnd(w)}  ${d}`);
}

/** `taskmesh --help`: every command, the global flags, where settings come from, the exit codes. */
export function mainHelp(version: string): string {
  const lines = [
    `taskmesh ${version}: the command-line client of a taskmesh gateway`,
    "",
    "Usage: taskmesh <command> [arguments] [flags]",
  ];
  for (const s of SECTIONS) lines.push("", `${s.title}:`, ...commandList(s.commands));
  lines.push(
    "",
    "Global flags:",
    ...flagLines(GLOBAL_FLAGS),
    "",
    "Settings: --addr and --api-key win over the environment (TASKMESH_ADDR, TASKMESH_API_KEY), which wins",
    'over the config file ~/.config/taskmesh/config.json ({"addr": "host:port", "apiKey": "..."}; another',
    "path in TASKMESH_CONFIG). NO_COLOR=1 turns colours off.",
    "",
    "Exit codes:",
    ...EXIT_CODE_HELP.map(([code, what]) => `  ${String(code).padStart(3)}  ${what}`),
    "",
    "Errors are printed on stderr as `error: [code] message`. Run `taskmesh <command> --help` for a command's flags.",
  );
  return `${lines.join("\n")}\n`;
}

/** `taskmesh <command> --help`. */
export function commandHelp(c: CommandSpec): string {
  const lines = [`Usage: ${synopsis(c)}${Object.keys(c.flags).length > 0 ? " [flags]" : ""}`, "", c.summary];
  if (c.details !== undefined) lines.push("", c.details);
  if (Object.keys(c.flags).length > 0) lines.push("", "Flags:", ...flagLines(c.flags));
  lines.push("", "Global flags:", ...flagLines(GLOBAL_FLAGS));
  return `${lines.join("\n")}\n`;
}

/** `taskmesh <group> --help`: the group's commands. */
export function groupHelp(s: CommandSection): string {
  const lines = [
    `Usage: taskmesh ${s.group ?? ""} <command> [arguments] [flags]`,
    "",
    s.summary ?? s.title,
    "",
    "Commands:",
    ...commandList(s.commands),
    "",
    `Run \`taskmesh ${s.group ?? ""} <command> --help\` for a command's flags.`,
  ];
  return `${lines.join("\n")}\n`;
}
