/**
 * Where the gateway is and which API key to present: from flags, then the environment, then the
 * config file, then defaults. Also builds the gRPC clients of the gateway's public services.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ApiKeyService } from "../gen/taskmesh/v1/api_key_service_pb.js";
import { ClusterService } from "../gen/taskmesh/v1/cluster_service_pb.js";
import { ConfigService } from "../gen/taskmesh/v1/config_service_pb.js";
import { ScheduleService } from "../gen/taskmesh/v1/schedule_service_pb.js";
import { TaskService } from "../gen/taskmesh/v1/task_service_pb.js";
import { VERSION } from "../lib/version.js";
import { UsageError } from "./args.js";

/** The gateway address used when nothing else names one. */
export const DEFAULT_ADDR = "127.0.0.1:8080";

/** What the CLI connects with. */
export interface ConnectionSettings {
  /** The gateway's base URL, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** The API key, when one was given anywhere. */
  apiKey: string | undefined;
}

/** The contents of the config file (`~/.config/taskmesh/config.json`). */
export interface CliConfigFile {
  addr?: string;
  apiKey?: string;
}

/**
 * The config file's path: `$TASKMESH_CONFIG`, else `$XDG_CONFIG_HOME/taskmesh/config.json`, else
 * `~/.config/taskmesh/config.json`.
 */
export function configFilePath(env: Readonly<Record<string, string | undefined>>, home: string): string {
  const explicit = env["TASKMESH_CONFIG"];
  if (explicit !== undefined && explicit !== "") return explicit;
  const xdg = env["XDG_CONFIG_HOME"];
  return join(xdg !== undefined && xdg !== "" ? xdg : join(home, ".config"), "taskmesh", "config.json");
}

/** Reads the config file; a missing file is empty, a malformed one a usage error naming it. */
export async function readConfigFile(path: string): Promise<CliConfigFile> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
    throw new UsageError(`config file ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new UsageError(`config file ${path}: not valid JSON`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new UsageError(`config file ${path}: expected a JSON object`);
  const o = v as Record<string, unknown>;
  const out: CliConfigFile = {};
  for (const k of ["addr", "apiKey"] as const) {
    const x = o[k];
    if (x === undefined) continue;
    if (typeof x !== "string") throw new UsageError(`config file ${path}: "${k}" must be a string`);
    out[k] = x;
  }
  return out;
}

/** Turns `host:port`, `http://host:port` or `https://host:port` into a base URL. */
export function baseUrlFor(addr: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(addr) ? addr : `http://${addr}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new UsageError(`--addr: expected host:port or a URL, got ${JSON.stringify(addr)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`--addr: only http:// and https:// are supported, got ${url.protocol}//`);
  }
  if (url.hostname === "") throw new UsageError(`--addr: no host in ${JSON.stringify(addr)}`);
  return withScheme.replace(/\/+$/, "");
}

/** The value sources, highest precedence first. */
export interface ConnectionSources {
  flags: { addr?: string | undefined; apiKey?: string | undefined };
  env: Readonly<Record<string, string | undefined>>;
  file: CliConfigFile;
}

/** Picks the address and key by precedence: flag, environment, config file, default. */
export function resolveConnection(s: ConnectionSources): ConnectionSettings {
  const pick = (...vs: (string | undefined)[]): string | undefined => vs.find((v) => v !== undefined && v !== "");
  const addr = pick(s.flags.addr, s.env["TASKMESH_ADDR"], s.file.addr) ?? DEFAULT_ADDR;
  return { baseUrl: baseUrlFor(addr), apiKey: pick(s.flags.apiKey, s.env["TASKMESH_API_KEY"], s.file.apiKey) };
}

/** Clients of the gateway's public services, sharing one HTTP/2 connection. */
export interface GatewayClients {
  tasks: Client<typeof TaskService>;
  cluster: Client<typeof ClusterService>;
  config: Client<typeof ConfigService>;
  keys: Client<typeof ApiKeyService>;
  schedules: Client<typeof ScheduleService>;
}

/** Connects to the gateway over gRPC, presenting the API key as a bearer token. */
export function createGatewayClients(settings: ConnectionSettings): GatewayClients {
  const auth: Interceptor = (next) => (req) => {
    if (settings.apiKey !== undefined) req.header.set("authorization", `Bearer ${settings.apiKey}`);
    req.header.set("user-agent", `taskmesh-cli/${VERSION}`);
    return next(req);
  };
  const transport = createGrpcTransport({ baseUrl: settings.baseUrl, interceptors: [auth] });
  return {
    tasks: createClient(TaskService, transport),
    cluster: createClient(ClusterService, transport),
    config: createClient(ConfigService, transport),
    keys: createClient(ApiKeyService, transport),
    schedules: createClient(ScheduleService, transport),
  };
}
