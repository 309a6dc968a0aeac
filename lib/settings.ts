import { parseArgs } from "node:util";
import type { ServerLimits } from "./server.js";

/** One setting: a flag `--name`, an optional env var, a default and a parser. */
export interface SettingSpec<T> {
  /** Env var read when the flag is absent. */
  env?: string;
  /** Used when neither flag nor env is set; omit to make the setting required. */
  default?: T;
  /** Converts the raw string; throw with a clear message on bad input. */
  parse: (raw: string) => T;
  /** One line for `--help`. */
  help: string;
}

type Specs = Record<string, SettingSpec<unknown>>;
type Values<S extends Specs> = { [K in keyof S]: S[K] extends SettingSpec<infer T> ? T : never };

/** A positive integer. */
function positive(raw: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`expected a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

/** Parsers for common setting types. */
export const as = {
  string: (raw: string): string => raw,
  int: (raw: string): number => {
    const n = Number(raw);
    if (!Number.isInteger(n)) throw new Error(`expected an integer, got ${JSON.stringify(raw)}`);
    return n;
  },
  port: (raw: string): number => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`expected a port, got ${JSON.stringify(raw)}`);
    return n;
  },
  /** `k=v,k2=v2` → a record (instance labels). */
  labels: (raw: string): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const pair of raw.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
      const eq = pair.indexOf("=");
      if (eq <= 0) throw new Error(`expected key=value, got ${JSON.stringify(pair)}`);
      out[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    return out;
  },
  list: (raw: string): string[] =>
    raw
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s.length > 0),
};

/**
 * Reads a service's settings from flags, then env, then defaults, through one schema, and fails
 * fast with a message naming the setting. The only place (with `main.ts`) that reads the
 * process's flags and environment.
 */
export function readSettings<S extends Specs>(
  service: string,
  specs: S,
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): Values<S> {
  const options: Record<string, { type: "string" | "boolean" }> = { help: { type: "boolean" } };
  for (const name of Object.keys(specs)) options[name] = { type: "string" };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  } catch (err) {
    throw new Error(`${service}: ${(err as Error).message}`);
  }
  if (parsed.values.help === true) {
    const lines = Object.entries(specs).map(
      ([name, s]) =>
        `  --${name}${s.env !== undefined ? ` (env ${s.env})` : ""}${
          s.default !== undefined ? ` [default ${JSON.stringify(s.default)}]` : ""
        }\n      ${s.help}`,
    );
    process.stdout.write(`usage: ${service} [options]\n${lines.join("\n")}\n`);
    process.exit(0);
  }
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(specs)) {
    const flag = parsed.values[name];
    const raw = typeof flag === "string" ? flag : spec.env !== undefined ? env[spec.env] : undefined;
    if (raw === undefined || raw === "") {
      if (!("default" in spec)) throw new Error(`${service}: --${name}${spec.env ? ` or ${spec.env}` : ""} is required`);
      out[name] = spec.default;
      continue;
    }
    try {
      out[name] = spec.parse(raw);
    } catch (err) {
      throw new Error(`${service}: --${name}: ${(err as Error).message}`);
    }
  }
  return out as Values<S>;
}

/** Settings every internal service and client shares (flags and env vars). */
const meshSettings = {
  "mesh-ca": { env: "TASKMESH_MESH_CA", default: "", parse: as.string, help: "PEM file of the mesh CA: turns mTLS on (with --mesh-cert and --mesh-key)" },
  "mesh-cert": { env: "TASKMESH_MESH_CERT", default: "", parse: as.string, help: "PEM certificate of this service's mesh identity (spiffe://taskmesh/<role>/<name>)" },
  "mesh-key": { env: "TASKMESH_MESH_KEY", default: "", parse: as.string, help: "PEM private key of --mesh-cert" },
  "service-token": {
    env: "TASKMESH_SERVICE_TOKEN",
    default: "",
    parse: (raw: string): string => {
      if (raw.length < 32) throw new Error("expected at least 32 characters (e.g. openssl rand -hex 32)");
      return raw;
    },
    help: "shared secret of the mesh's services when mTLS is not used (at least 32 characters)",
  },
} satisfies Specs;

/** Bounds on what one client can hold of a service's port (lib/server.ts ServerLimits). */
const limitSettings = {
  "max-connections": { env: "TASKMESH_MAX_CONNECTIONS", default: 10_000, parse: positive, help: "open connections in all; more are closed at once" },
  "max-connections-per-address": {
    env: "TASKMESH_MAX_CONNECTIONS_PER_ADDRESS",
    default: 1000,
    parse: positive,
    help: "open connections from one IP address; more are closed at once",
  },
  "headers-timeout-ms": {
    env: "TASKMESH_HEADERS_TIMEOUT_MS",
    default: 10_000,
    parse: positive,
    help: "time to send a request's headers (and a TLS handshake); HTTP/1 gets 408",
  },
  "request-timeout-ms": {
    env: "TASKMESH_REQUEST_TIMEOUT_MS",
    default: 60_000,
    parse: positive,
    help: "time to send a whole request, body included (streams of messages excepted)",
  },
  "idle-timeout-ms": { env: "TASKMESH_IDLE_TIMEOUT_MS", default: 300_000, parse: positive, help: "an HTTP/2 connection without streams for this long is closed" },
  "max-concurrent-streams": {
    env: "TASKMESH_MAX_CONCURRENT_STREAMS",
    default: 256,
    parse: positive,
    help: "streams one HTTP/2 connection may have open at once",
  },
} satisfies Specs;

/** The server limits of a service's settings (see ServerLimits in lib/server.ts). */
export function limitsFrom(s: { [K in keyof typeof limitSettings]: number }): ServerLimits {
  return {
    maxConnections: s["max-connections"],
    maxConnectionsPerAddress: s["max-connections-per-address"],
    headersTimeoutMs: s["headers-timeout-ms"],
    requestTimeoutMs: s["request-timeout-ms"],
    idleTimeoutMs: s["idle-timeout-ms"],
    maxConcurrentStreams: s["max-concurrent-streams"],
  };
}

/** Settings every service shares: where etcd and Redis are, the etcd key root, mesh credentials, limits. */
export const commonSettings = {
  ...meshSettings,
  ...limitSettings,
  etcd: { env: "TASKMESH_ETCD", default: ["127.0.0.1:2379"], parse: as.list, help: "etcd endpoints, comma-separated" },
  "etcd-root": { env: "TASKMESH_ETCD_ROOT", default: "/taskmesh/", parse: as.string, help: "root of taskmesh's etcd keys" },
  "log-level": { env: "TASKMESH_LOG_LEVEL", default: "info", parse: as.string, help: "pino log level" },
  labels: {
    env: "TASKMESH_LABELS",
    default: {} as Record<string, string>,
    parse: as.labels,
    help: "instance labels k=v,… (gray releases of configuration target them)",
  },
  "otlp-endpoint": {
    env: "OTEL_EXPORTER_OTLP_ENDPOINT",
    default: "",
    parse: as.string,
    help: "OTLP/HTTP collector base URL; spans go to <url>/v1/traces (empty = no export)",
  },
  "advertise-address": {
    env: "TASKMESH_ADVERTISE_ADDRESS",
    default: "",
    parse: as.string,
    help: "host[:port] other services dial, when it differs from the bound address (containers)",
  },
  tracing: {
    env: "TASKMESH_TRACING",
    default: false,
    parse: (raw: string): boolean => {
      if (raw === "1" || raw === "true" || raw === "on") return true;
      if (raw === "0" || raw === "false" || raw === "off") return false;
      throw new Error(`expected on or off, got ${JSON.stringify(raw)}`);
    },
    help: "make spans (trace ids in logs) even without an OTLP endpoint",
  },
  "config-cache": {
    env: "TASKMESH_CONFIG_CACHE",
    default: "",
    parse: as.string,
    help: "file for the last-known-good configuration (default .taskmesh/cache/<service>-<id>.json)",
  },
} satisfies Specs;
