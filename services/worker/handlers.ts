/**
 * The worker's handler registry: the handler API (re-exported from task-api.ts, which the
 * built-ins import, so that there is no import cycle), the built-ins and user-module loading.
 */

import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { BUILTIN_TASK_TYPES } from "./builtin/index.js";
import type { TaskHandler } from "./task-api.js";

export {
  abortableDelay,
  CancelledError,
  invalidPayload,
  isJsonObject,
  optionalBoolean,
  optionalNonNegative,
  optionalString,
  requireString,
  TaskFailure,
  type JsonObject,
  type JsonValue,
  type TaskContext,
  type TaskHandler,
} from "./task-api.js";
export { BUILTIN_TASK_TYPES, builtinHandlers, type BuiltinOptions } from "./builtin/index.js";
export type { LookupFn } from "./builtin/http-request.js";

/** What a task type may be called: a letter, then letters, digits, `_ . : -`, at most 128. */
export const TASK_TYPE_PATTERN = /^[A-Za-z][A-Za-z0-9_.:-]{0,127}$/;

/**
 * Loads a user module (path to .ts or .js; the worker runs under tsx so dynamic import of .ts
 * works). Its named exports that are functions become handlers keyed by export name; a default
 * export may be an object mapping type → function (or a named function, keyed by its name).
 * Non-function named exports are ignored. Names clashing with built-ins, invalid names, a type
 * defined twice, or a module with no handlers are errors.
 */
export async function loadHandlers(path: string): Promise<Map<string, TaskHandler>> {
  const abs = isAbsolute(path) ? path : resolve(process.cwd(), path);
  const mod = (await import(pathToFileURL(abs).href)) as Record<string, unknown>;
  const handlers = new Map<string, TaskHandler>();
  const add = (type: string, fn: unknown, where: string): void => {
    if (typeof fn !== "function") throw new Error(`handlers module ${path}: ${where} is not a function`);
    if (!TASK_TYPE_PATTERN.test(type)) {
      throw new Error(`handlers module ${path}: invalid task type name ${JSON.stringify(type)}`);
    }
    if (BUILTIN_TASK_TYPES.includes(type)) {
      throw new Error(`handlers module ${path}: task type ${JSON.stringify(type)} clashes with a built-in`);
    }
    if (handlers.has(type)) throw new Error(`handlers module ${path}: task type ${JSON.stringify(type)} defined twice`);
    handlers.set(type, fn as TaskHandler);
  };

  const def = mod["default"];
  if (typeof def === "function") {
    if (def.name === "" || def.name === "default") {
      throw new Error(`handlers module ${path}: default export is an anonymous function; export it by name`);
    }
    add(def.name, def, "default export");
  } else if (typeof def === "object" && def !== null) {
    for (const [type, fn] of Object.entries(def)) add(type, fn, `default export's ${JSON.stringify(type)}`);
  } else if (def !== undefined) {
    throw new Error(`handlers module ${path}: default export must be an object of handlers or a function`);
  }
  for (const [name, value] of Object.entries(mod)) {
    if (name === "default" || typeof value !== "function") continue;
    // `export default greet` plus `export { greet }` is the same handler, not a clash.
    if (handlers.get(name) === value) continue;
    add(name, value, `export ${JSON.stringify(name)}`);
  }
  if (handlers.size === 0) throw new Error(`handlers module ${path} exports no handlers`);
  return handlers;
}

