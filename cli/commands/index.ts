/** Every command of `taskmesh`, in help order, with the headings they are listed under. */
import type { CommandSpec } from "../command.js";
import { clusterCommands } from "./cluster.js";
import { configCommands } from "./config.js";
import { keyCommands } from "./keys.js";
import { scheduleCommands } from "./schedules.js";
import { taskCommands } from "./tasks.js";

/** A heading of the command list and its commands. */
export interface CommandSection {
  title: string;
  /** The group word (`config`), for sections whose commands share one. */
  group?: string;
  /** One line about the group, for `taskmesh <group> --help`. */
  summary?: string;
  commands: readonly CommandSpec[];
}

/** The command list, as `taskmesh --help` shows it. */
export const SECTIONS: readonly CommandSection[] = [
  { title: "Tasks", commands: taskCommands },
  { title: "Cluster (admin)", commands: clusterCommands },
  { title: "Configuration (admin)", group: "config", summary: "read, write and watch namespaced configuration", commands: configCommands },
  { title: "API keys (admin)", group: "keys", summary: "create, list and revoke API keys", commands: keyCommands },
  { title: "Schedules", group: "schedules", summary: "recurring tasks on a cron expression or an interval", commands: scheduleCommands },
];

/** Every command. */
export const COMMANDS: readonly CommandSpec[] = SECTIONS.flatMap((s) => s.commands);
