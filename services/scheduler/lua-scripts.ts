import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";

/** One Lua script of `services/scheduler/lua/`: its file (without `.lua`) and its key count. */
export interface ScriptSpec {
  file: string;
  keys: number;
  readOnly?: boolean;
}

const cache = new Map<string, string>();

function read(name: string): string {
  let text = cache.get(name);
  if (text === undefined) {
    text = readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), "utf8");
    cache.set(name, text);
  }
  return text;
}

/**
 * Defines each script as an ioredis command (EVALSHA, falling back to EVAL), each prefixed with
 * the shared `lib` file so helpers live in one place. Refuses a connection with a keyPrefix:
 * the stores build their keys themselves (some inside Lua).
 */
export function defineScripts(redis: Redis, lib: string, scripts: Readonly<Record<string, ScriptSpec>>, owner: string): void {
  const keyPrefix = redis.options.keyPrefix;
  if (keyPrefix !== undefined && keyPrefix !== "") {
    throw new Error(`${owner} needs a Redis connection without keyPrefix; use the prefix option`);
  }
  const prelude = read(lib);
  for (const [name, s] of Object.entries(scripts)) {
    redis.defineCommand(name, { numberOfKeys: s.keys, lua: `${prelude}\n${read(s.file)}`, readOnly: s.readOnly === true });
  }
}
