import { BUILTIN_TASK_TYPES } from "../../../lib/task-types.js";
import type { TaskHandler } from "../task-api.js";
import { dataProcessing } from "./data-processing.js";
import { fileOperation } from "./file-operation.js";
import { healthCheck } from "./health-check.js";
import { httpRequest, type LookupFn } from "./http-request.js";
import { fail, noop, sleep } from "./test-types.js";

/** Names of the built-in task types (the contract list lives in the shared library). */
export { BUILTIN_TASK_TYPES };

/** What the built-in handlers need from the worker. */
export interface BuiltinOptions {
  /** Directory `file_operation` paths are relative to; nothing outside it is reachable. */
  filesRoot: string;
  /** Hosts (names or IPs) that http_request may reach although private/loopback. */
  httpAllowedHosts: () => readonly string[];
  /** Injectable DNS lookup (all addresses) for tests; the system resolver by default. */
  lookup?: LookupFn;
  /** Current slot usage, for health_check. */
  slots: () => { slots: number; used: number };
}

/** The built-in task types, keyed by type; the keys are {@link BUILTIN_TASK_TYPES}. */
export function builtinHandlers(opts: BuiltinOptions): Map<string, TaskHandler> {
  const map = new Map<string, TaskHandler>([
    ["data_processing", dataProcessing],
    ["file_operation", fileOperation(opts.filesRoot)],
    [
      "http_request",
      httpRequest(
        opts.lookup === undefined
          ? { allowedHosts: opts.httpAllowedHosts }
          : { allowedHosts: opts.httpAllowedHosts, lookup: opts.lookup },
      ),
    ],
    ["health_check", healthCheck(opts.slots)],
    ["noop", noop],
    ["sleep", sleep],
    ["fail", fail],
  ]);
  for (const t of BUILTIN_TASK_TYPES) if (!map.has(t)) throw new Error(`built-in ${t} missing`);
  return map;
}
