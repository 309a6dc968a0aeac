import type { ConnectError } from "@connectrpc/connect";
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import type { ConnectionOptions } from "node:tls";
import { Redis, SentinelConnector, type RedisOptions, type SentinelConnectionOptions } from "ioredis";
import { DEPENDENCY_RETRY_AFTER_MS, DEPENDENCY_UNAVAILABLE, unavailable as unavailableError } from "./errors.js";
import { as, type SettingSpec } from "./settings.js";

/**
 * Where Redis is, as given by the `--redis` setting (see {@link parseRedisUrl}): one server, or a
 * master group watched by Redis Sentinel.
 */
export type RedisTarget = StandaloneTarget | SentinelTarget;

/** One Redis server: `redis://` or `rediss://` (TLS), handed to ioredis as written. */
export interface StandaloneTarget {
  kind: "standalone";
  /** The URL as given (ioredis reads host, port, credentials, db and its query options). */
  url: string;
  host: string;
  port: number;
  db: number;
  tls: boolean;
}

/** A master group behind Redis Sentinel: `redis-sentinel://`, or `rediss-sentinel://` (TLS). */
export interface SentinelTarget {
  kind: "sentinel";
  /** Sentinels to ask for the master, tried in order (more are learned from them). */
  sentinels: { host: string; port: number }[];
  /** The master group's name (`sentinel monitor <name> …`). */
  name: string;
  db: number;
  /** TLS to the Sentinels and to the master and replicas (`rediss-sentinel://`). */
  tls: boolean;
  /** ACL user and password of the Redis master and replicas (not of the Sentinels). */
  username?: string;
  password?: string;
  /** ACL user and password of the Sentinels themselves. */
  sentinelUsername?: string;
  sentinelPassword?: string;
}

/**
 * PEM files for Redis over TLS (`rediss://`, `rediss-sentinel://`), read when the client is
 * created: `ca`, the CA certificate(s) to verify the servers with instead of Node's default trust
 * store (a private CA); `cert` and `key` (always together), the client certificate for servers
 * that require one (`tls-auth-clients yes`). With Sentinel the same files serve for the
 * Sentinels and for the master and replicas. Given by the `--redis-ca`, `--redis-cert` and
 * `--redis-key` settings ({@link redisTlsSettings}, {@link redisTlsFrom}).
 */
export interface RedisTls {
  ca?: string;
  cert?: string;
  key?: string;
}

/**
 * ioredis options as taskmesh passes them: replies in ioredis' default ("legacy") shapes, which
 * the stores' parsers expect.
 */
export type RedisClientOptions = Omit<RedisOptions, "replyMapping">;

/** Port of a Sentinel written without one. */
export const DEFAULT_SENTINEL_PORT = 26379;

/**
 * How long a Redis command may go unanswered before it fails ("Command timed out"), so a call to
 * an unreachable or hung Redis fails instead of hanging. The scheduler's longest legitimate calls
 * are Lua scripts over batches of 500 tasks (≈ 10 ms) and listing scans of ≤ 10,000 ids; a
 * `WAIT` adds its own timeout on top (the scheduler passes this plus the WAIT timeout).
 */
export const DEFAULT_REDIS_COMMAND_TIMEOUT_MS = 5000;

/**
 * The forms of the `--redis` setting, one line for a service's `--help` (see
 * {@link parseRedisUrl}).
 */
export const REDIS_URL_HELP =
  "Redis: redis://[user:password@]host:port[/db], rediss://… (TLS), " +
  "redis-sentinel://[user:password@]host:26379,host2:26379/<masterName>[?db=N&sentinelPassword=…] " +
  "or rediss-sentinel://… (Sentinel, TLS to the Sentinels and to Redis)";

const FORMS =
  "expected redis://[user:password@]host[:port][/db], rediss://… (TLS), " +
  "redis-sentinel://[user:password@]host[:port][,host[:port]…]/<masterName>[?db=N&sentinelPassword=…] " +
  "or rediss-sentinel://… (Sentinel over TLS)";
const SENTINEL_PARAMS = ["db", "sentinelUsername", "sentinelPassword"] as const;
const HOST = /^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])$/;
/** Query parameters whose values are secrets (`sentinelPassword`, ioredis' `password`, …). */
const SECRET_PARAM = /^[^=]*(?:pass|secret|token)/i;

/**
 * A Redis URL (any of the {@link parseRedisUrl} forms, or something that failed to parse as one)
 * with its secrets masked, for logs and error messages: the credentials before the last `@`
 * become `***`, as do the values of query parameters named like a password (`sentinelPassword`,
 * `password`, …). Never echo a Redis URL any other way.
 */
export function redactRedisUrl(raw: string): string {
  // Spans [from, to) to mask: the values of password-like query parameters, then the userinfo,
  // ending at the last "@" that is not inside one of those values (a password may hold a raw "@").
  const spans: [number, number][] = [];
  const query = raw.indexOf("?");
  if (query >= 0) {
    let at = query;
    while (at < raw.length) {
      let end = raw.indexOf("&", at + 1);
      if (end < 0) end = raw.length;
      const pair = raw.slice(at + 1, end);
      const eq = pair.indexOf("=");
      if (eq >= 0 && SECRET_PARAM.test(pair.slice(0, eq)) && eq + 1 < pair.length) spans.push([at + 1 + eq + 1, end]);
      at = end;
    }
  }
  const inSpan = (i: number): boolean => spans.some(([from, to]) => i >= from && i < to);
  let userEnd = raw.lastIndexOf("@");
  while (userEnd >= 0 && inSpan(userEnd)) userEnd = userEnd === 0 ? -1 : raw.lastIndexOf("@", userEnd - 1);
  if (userEnd >= 0) {
    const scheme = raw.indexOf("://");
    spans.push([scheme >= 0 && scheme < userEnd ? scheme + 3 : 0, userEnd]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  let out = "";
  let pos = 0;
  for (const [from, to] of spans) {
    if (to <= pos) continue;
    out += `${raw.slice(pos, Math.max(pos, from))}***`;
    pos = to;
  }
  return out + raw.slice(pos);
}

/**
 * Quotes pieces of `raw` for error messages: a piece shows only if it is also in the redacted URL
 * (so it holds nothing of a secret); else it shows as `"***"` (a password with a stray `/`, `:`
 * or `?` is cut into pieces that end up in host or path positions).
 */
interface Quote {
  /** The piece in JSON quotes, or `"***"`. */
  (piece: string): string;
  /** The piece as it is, or `***`. */
  bare(piece: string): string;
  /** Whether a piece was hidden. */
  readonly hid: boolean;
}

function quoter(raw: string): Quote {
  const visible = redactRedisUrl(raw);
  const state = { hid: false };
  const bare = (piece: string): string => {
    if (visible.includes(piece)) return piece;
    state.hid = true;
    return "***";
  };
  const quote = Object.assign((piece: string) => JSON.stringify(bare(piece)), { bare });
  return Object.defineProperty(quote, "hid", { get: () => state.hid }) as Quote;
}

function database(raw: string, where: string, q: Quote): number {
  if (!/^\d{1,9}$/.test(raw)) throw new Error(`${where}: the database must be a non-negative integer, got ${q(raw)}`);
  return Number(raw);
}

function decode(raw: string, what: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new Error(`bad percent-encoding in the ${what}`);
  }
}

/**
 * Parses the `--redis` setting (`TASKMESH_REDIS`), failing with a message that says what is wrong
 * (the settings reader prefixes the flag's name) and never quotes a password (see
 * {@link redactRedisUrl}). Four forms:
 *
 * - `redis://[user:password@]host[:port][/db]` — one server (port 6379, db 0 by default);
 * - `rediss://…` — the same over TLS (see {@link RedisTls} for a private CA or a client
 *   certificate);
 * - `redis-sentinel://[[user]:password@]host1[:port1][,host2[:port2]…]/<masterName>[?db=N&sentinelUsername=…&sentinelPassword=…]`
 *   — a master group found through Sentinel (port 26379 by default), the spelling Lettuce and
 *   Spring Data Redis use for the scheme, with the master name as the path (Lettuce writes it
 *   after `#`, redis-py's `redis+sentinel://` as the path). The credentials before `@` are those
 *   of the Redis master and replicas; `sentinelUsername`/`sentinelPassword` are the Sentinels'.
 *   Percent-encode `@`, `:`, `/`, `,`, `?`, `#`, `&` and `%` inside credentials;
 * - `rediss-sentinel://…` — the same with TLS both to the Sentinels and to the master and
 *   replicas (Sentinels with `tls-port`, Redis with `tls-replication yes`). The servers'
 *   certificates are checked against the addresses the Sentinels announce (IP addresses unless
 *   they run with `announce-hostnames yes`), so they need those in their subjectAltNames.
 */
export function parseRedisUrl(raw: string): RedisTarget {
  const s = raw.trim();
  const q = quoter(s);
  const schemeEnd = s.indexOf("://");
  const scheme = schemeEnd < 0 ? "" : s.slice(0, schemeEnd).toLowerCase();
  try {
    switch (scheme) {
      case "redis":
      case "rediss":
        return parseStandalone(s, scheme === "rediss", q);
      case "redis-sentinel":
      case "rediss-sentinel":
        return parseSentinel(s, schemeEnd + 3, scheme === "rediss-sentinel", q);
      case "redis+sentinel":
      case "rediss+sentinel":
      case "sentinel":
        throw new Error(`${JSON.stringify(scheme + "://")} is not supported; ${FORMS}`);
      default:
        throw new Error(`${FORMS}, got ${JSON.stringify(redactRedisUrl(s))}`);
    }
  } catch (err) {
    if (!q.hid) throw err;
    throw new Error(
      `${(err as Error).message} (*** is a part of the URL that may belong to a password: percent-encode ` +
        "@ : / ? # & , and % inside credentials)",
    );
  }
}

/** A settings parser for `--redis`: checks the URL with {@link parseRedisUrl}, keeps it as written. */
export function redisUrlSetting(raw: string): string {
  parseRedisUrl(raw);
  return raw.trim();
}

function parseStandalone(s: string, tls: boolean, q: Quote): StandaloneTarget {
  const shown = JSON.stringify(redactRedisUrl(s));
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    throw new Error(`not a valid URL: ${shown}; ${FORMS}`);
  }
  if (url.hostname === "") throw new Error(`no host in ${shown}; ${FORMS}`);
  if (url.port === "0") throw new Error(`port 0 in ${shown}`);
  if (url.hash !== "") throw new Error(`unexpected #fragment in ${shown}`);
  const path = url.pathname.replace(/^\//, "");
  if (path.includes("/")) throw new Error(`the path must be the database number alone, got ${q(url.pathname)}`);
  return {
    kind: "standalone",
    url: s,
    host: url.hostname,
    port: url.port === "" ? 6379 : Number(url.port),
    db: path === "" ? 0 : database(path, "path", q),
    tls,
  };
}

function parseSentinel(s: string, start: number, tls: boolean, q: Quote): SentinelTarget {
  const scheme = tls ? "rediss-sentinel" : "redis-sentinel";
  const hashAt = s.indexOf("#", start);
  if (hashAt >= 0) {
    throw new Error(`the master name goes in the path (${scheme}://host:26379/mymaster), not after #`);
  }
  const queryAt = s.indexOf("?", start);
  const beforeQuery = queryAt < 0 ? s.slice(start) : s.slice(start, queryAt);
  const slash = beforeQuery.indexOf("/");
  const authority = slash < 0 ? beforeQuery : beforeQuery.slice(0, slash);
  const path = slash < 0 ? "" : beforeQuery.slice(slash + 1);

  const at = authority.lastIndexOf("@");
  const hostList = at < 0 ? authority : authority.slice(at + 1);
  const out: SentinelTarget = { kind: "sentinel", sentinels: [], name: "", db: 0, tls };
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    const colon = userinfo.indexOf(":");
    const user = decode(colon < 0 ? userinfo : userinfo.slice(0, colon), "user name");
    const password = colon < 0 ? "" : decode(userinfo.slice(colon + 1), "password");
    if (user !== "") out.username = user;
    if (password !== "") out.password = password;
  }

  if (hostList === "") throw new Error(`no Sentinel address in ${JSON.stringify(redactRedisUrl(s))}; ${FORMS}`);
  for (const entry of hostList.split(",")) {
    const e = entry.trim();
    if (e === "") throw new Error(`empty Sentinel address in the list ${q(hostList)}`);
    // host, host:port, [v6], [v6]:port
    const m = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(e);
    const host = m?.[1] ?? "";
    const port = m?.[2];
    if (!HOST.test(host)) throw new Error(`bad Sentinel host ${q(host)} in ${q(e)}`);
    let p = DEFAULT_SENTINEL_PORT;
    if (port !== undefined) {
      p = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
      if (!(p >= 1 && p <= 65535)) throw new Error(`bad Sentinel port ${q(port)} in ${q(e)}`);
    }
    out.sentinels.push({ host: host.startsWith("[") ? host.slice(1, -1) : host, port: p });
  }

  const name = decode(path, "master name");
  if (name === "") {
    throw new Error(`no master name: write ${scheme}://${q.bare(hostList)}/<masterName> (the name of \`sentinel monitor <name> …\`)`);
  }
  if (name.includes("/")) {
    throw new Error(`the path must be the master name alone, got ${q(path)} (the database goes in ?db=N)`);
  }
  out.name = name;

  if (queryAt >= 0) {
    const seen = new Set<string>();
    for (const [key, value] of new URLSearchParams(s.slice(queryAt + 1))) {
      if (!(SENTINEL_PARAMS as readonly string[]).includes(key)) {
        throw new Error(`unknown parameter ${q(key)} (known: ${SENTINEL_PARAMS.join(", ")})`);
      }
      if (seen.has(key)) throw new Error(`parameter ${JSON.stringify(key)} is given twice`);
      seen.add(key);
      if (key === "db") out.db = database(value, "db", q);
      else if (value !== "") out[key as "sentinelUsername" | "sentinelPassword"] = value;
    }
  }
  return out;
}

/**
 * Delay before reconnect attempt `times` (1, 2, …): 50 ms doubling up to 500 ms, plus up to 50 ms
 * of jitter. The cap is low on purpose: during a failover the attempts fail fast (connection
 * refused, or Sentinel still naming the old master) and the client should find the promoted
 * replica within about half a second of its promotion; an attempt costs one Sentinel query and
 * one TCP connect.
 */
export function redisReconnectDelay(times: number): number {
  return Math.min(50 * 2 ** Math.max(0, times - 1), 500) + Math.floor(Math.random() * 50);
}

/**
 * After a failover the old master may still be reachable as a replica (a Sentinel-driven
 * `SENTINEL FAILOVER`, or a partition healing): its writes answer READONLY. Reconnect (asking
 * Sentinel for the master again) and resend the command, which Redis refused without applying.
 */
function reconnectOnReadonly(err: Error): boolean | 2 {
  return err.message.includes("READONLY") ? 2 : false;
}

/**
 * The ioredis options taskmesh uses for `target`, with `overrides` (a caller's own choices, such
 * as `maxRetriesPerRequest` or `enableAutoPipelining`) on top. What they mean:
 *
 * - `commandTimeout` ({@link DEFAULT_REDIS_COMMAND_TIMEOUT_MS}): a command without an answer fails.
 *   It only rejects the caller's promise: a command still waiting in the offline queue is sent
 *   once the connection is back (ioredis cannot take it back), so a write that timed out may still
 *   be applied later — as with any write whose reply was lost.
 * - `socketTimeout` (the command timeout + 1 s unless given): a connection that receives nothing
 *   while commands wait on it is destroyed and re-established (a peer that vanished without a
 *   FIN, which TCP keepalive would notice only after minutes).
 * - `maxRetriesPerRequest` (3 unless given): commands queued while the connection is down fail
 *   with MaxRetriesPerRequestError every 4th failed reconnect attempt (≈ 1–2 s), so they fail
 *   rather than pile up; with the command timeout, a caller waits at most that long.
 * - The offline queue stays on: a command issued while reconnecting (a failover takes a few
 *   seconds) waits for the new connection instead of failing at once, within the bounds above.
 *   One gap: while no Sentinel at all answers, ioredis keeps retrying inside one connection
 *   attempt, so commands fail by `commandTimeout` but stay queued until a Sentinel answers.
 * - `retryStrategy` ({@link redisReconnectDelay}) and `reconnectOnError` (READONLY → reconnect and
 *   resend).
 * - Sentinel: the master is asked of the Sentinels in order (`sentinels`, `name`, role master,
 *   checked with INFO on connect); `updateSentinels` learns further Sentinels from those it
 *   reaches; `sentinelRetryStrategy` retries all of them from scratch (100 ms steps up to 1 s)
 *   when none answers; `sentinelCommandTimeout` skips a hung Sentinel after 2 s.
 * - Failover detection: `Connector` is {@link FailoverAwareSentinelConnector}, which drops a
 *   connection as soon as the Sentinels announce `+switch-master` (without it, after a
 *   `SENTINEL FAILOVER` a client keeps writing to the demoted master until Sentinel turns it into a
 *   replica, about 10 s later, and those writes are lost). ioredis' own `failoverDetector` is off:
 *   in 6.0.0 an announcement arriving while the client is asking a Sentinel for the master (during
 *   a reconnect) ends the client for good ("Connection is closed.", never reconnecting).
 * - TLS (`rediss://`, `rediss-sentinel://`): `tls` with the files of `tls` ({@link RedisTls};
 *   Node's default trust store without a `ca`), for Sentinel also `sentinelTLS` (the same files,
 *   used by the failover detection too) and `enableTLSForSentinelMode`. Files given for a URL
 *   without TLS are refused.
 *
 * `duplicate()` copies all of these (pub/sub connections keep the Sentinel setup), and ioredis
 * resubscribes a subscriber's channels after a reconnect (`autoResubscribe`, on by default).
 * Throws when a TLS file cannot be read.
 */
export function redisClientOptions(
  target: RedisTarget,
  overrides: RedisClientOptions = {},
  tls?: RedisTls,
): RedisClientOptions {
  const commandTimeout = overrides.commandTimeout ?? DEFAULT_REDIS_COMMAND_TIMEOUT_MS;
  const secure = tlsOptions(target, tls);
  const common: RedisClientOptions = {
    connectTimeout: 3000,
    commandTimeout,
    socketTimeout: commandTimeout + 1000,
    maxRetriesPerRequest: 3,
    retryStrategy: redisReconnectDelay,
    reconnectOnError: reconnectOnReadonly,
  };
  // Given even without files: ioredis itself only turns TLS on for a lower-case "rediss://".
  if (target.kind === "standalone") return { ...common, ...(secure !== undefined ? { tls: secure } : {}), ...overrides };
  return {
    ...common,
    sentinels: target.sentinels.map((s) => ({ host: s.host, port: s.port })),
    name: target.name,
    role: "master",
    db: target.db,
    ...(target.username !== undefined ? { username: target.username } : {}),
    ...(target.password !== undefined ? { password: target.password } : {}),
    ...(target.sentinelUsername !== undefined ? { sentinelUsername: target.sentinelUsername } : {}),
    ...(target.sentinelPassword !== undefined ? { sentinelPassword: target.sentinelPassword } : {}),
    ...(secure !== undefined ? { enableTLSForSentinelMode: true, tls: secure, sentinelTLS: { ...secure } } : {}),
    Connector: FailoverAwareSentinelConnector,
    failoverDetector: false,
    updateSentinels: true,
    sentinelRetryStrategy: (times: number) => Math.min(times * 100, 1000),
    sentinelCommandTimeout: 2000,
    ...overrides,
  };
}

const TLS_FLAGS = { ca: "--redis-ca", cert: "--redis-cert", key: "--redis-key" } as const;

/** The file of `what`, or `undefined` for none (an empty path is none). */
function tlsFile(tls: RedisTls | undefined, what: keyof RedisTls): string | undefined {
  const path = tls?.[what]?.trim();
  return path === undefined || path === "" ? undefined : path;
}

/** Why `tls` cannot be used with `target` (`undefined` when it can), naming the settings. */
function tlsProblem(tls: RedisTls | undefined, target: RedisTarget | undefined): string | undefined {
  const given = (Object.keys(TLS_FLAGS) as (keyof RedisTls)[]).filter((k) => tlsFile(tls, k) !== undefined);
  if (given.includes("cert") !== given.includes("key")) {
    const [has, lacks] = given.includes("cert") ? (["cert", "key"] as const) : (["key", "cert"] as const);
    return `${TLS_FLAGS[has]} is set without ${TLS_FLAGS[lacks]}: a client certificate needs both ${TLS_FLAGS.cert} and ${TLS_FLAGS.key}`;
  }
  if (given.length > 0 && target !== undefined && !target.tls) {
    const scheme = target.kind === "standalone" ? "redis://" : "redis-sentinel://";
    return (
      `${given.map((k) => TLS_FLAGS[k]).join(", ")} ${given.length === 1 ? "is" : "are"} set but the Redis URL is ` +
      `${scheme} (no TLS): write rediss://… or rediss-sentinel://… to use TLS`
    );
  }
  return undefined;
}

/** Node TLS options for `target` (undefined when it is not TLS), with the files of `tls` read. */
function tlsOptions(target: RedisTarget, tls: RedisTls | undefined): ConnectionOptions | undefined {
  const problem = tlsProblem(tls, target);
  if (problem !== undefined) throw new Error(problem);
  if (!target.tls) return undefined;
  const out: ConnectionOptions = {};
  for (const what of ["ca", "cert", "key"] as const) {
    const path = tlsFile(tls, what);
    if (path !== undefined) out[what] = readPem(path, what);
  }
  return out;
}

function readPem(path: string, what: keyof RedisTls): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new Error(`cannot read the Redis TLS ${what} file (${TLS_FLAGS[what]}) ${JSON.stringify(path)}: ${e.code ?? e.message}`);
  }
  if (!text.includes("-----BEGIN ")) {
    throw new Error(`the Redis TLS ${what} file (${TLS_FLAGS[what]}) ${JSON.stringify(path)} is not PEM (no "-----BEGIN" line)`);
  }
  return text;
}

/**
 * The settings of Redis over TLS, to spread into a service's settings next to `--redis` (see
 * lib/settings.ts); {@link redisTlsFrom} turns their values into the `tls` of
 * {@link createRedis}. All empty (the default) is Node's default trust store and no client
 * certificate.
 */
export const redisTlsSettings = {
  "redis-ca": {
    env: "TASKMESH_REDIS_CA",
    default: "",
    parse: as.string,
    help: "PEM file of the CA that signed the Redis (and Sentinel) server certificates, for rediss:// and rediss-sentinel:// (empty = the system's trusted CAs)",
  },
  "redis-cert": {
    env: "TASKMESH_REDIS_CERT",
    default: "",
    parse: as.string,
    help: "PEM client certificate for Redis servers that require one (tls-auth-clients yes); needs --redis-key (empty = none)",
  },
  "redis-key": {
    env: "TASKMESH_REDIS_KEY",
    default: "",
    parse: as.string,
    help: "PEM private key of --redis-cert (empty = none)",
  },
} satisfies Record<string, SettingSpec<string>>;

/** The values of {@link redisTlsSettings}, and optionally the `--redis` URL to check them against. */
export interface RedisTlsSettingValues {
  "redis-ca": string;
  "redis-cert": string;
  "redis-key": string;
  /** The `--redis` setting: when given, TLS files with a URL without TLS are refused here already. */
  redis?: string;
}

/**
 * The {@link RedisTls} of a service's settings ({@link redisTlsSettings}): `undefined` when none
 * of the files is given. Throws, naming the settings, when only one of `--redis-cert` and
 * `--redis-key` is given, or when files are given and `settings.redis` is a URL without TLS
 * (`redis://`, `redis-sentinel://`): whoever set them believes the connection is encrypted. The
 * files themselves are read by {@link createRedis}.
 */
export function redisTlsFrom(settings: RedisTlsSettingValues): RedisTls | undefined {
  const tls: RedisTls = {};
  const ca = settings["redis-ca"].trim();
  const cert = settings["redis-cert"].trim();
  const key = settings["redis-key"].trim();
  if (ca !== "") tls.ca = ca;
  if (cert !== "") tls.cert = cert;
  if (key !== "") tls.key = key;
  const problem = tlsProblem(tls, settings.redis === undefined ? undefined : parseRedisUrl(settings.redis));
  if (problem !== undefined) throw new Error(problem);
  return Object.keys(tls).length === 0 ? undefined : tls;
}

/** A master switch announced by a Sentinel: where the master is now, and when we heard it. */
interface MasterSwitch {
  host: string;
  port: number;
  at: number;
}

/**
 * One subscription to `+switch-master` on each configured Sentinel of a master group, shared by
 * every client of that group in the process (started with the first, stopped with the last). Its
 * connections are unref()ed: they never keep a process alive.
 */
class SwitchWatch {
  private static readonly groups = new Map<string, SwitchWatch>();
  private readonly listeners = new Set<(s: MasterSwitch) => void>();
  private subscribers: Redis[] = [];
  /** The last switch heard (duplicates from the other Sentinels are dropped). */
  latest: MasterSwitch | undefined;

  private constructor(
    private readonly key: string,
    private readonly options: SentinelConnectionOptions,
  ) {}

  static of(options: SentinelConnectionOptions): SwitchWatch {
    const key = JSON.stringify([
      options.name,
      options.sentinels,
      options.sentinelUsername,
      options.sentinelPassword,
      options.sentinelTLS ?? null,
    ]);
    let w = SwitchWatch.groups.get(key);
    if (w === undefined) SwitchWatch.groups.set(key, (w = new SwitchWatch(key, options)));
    return w;
  }

  /** Calls `listener` on every switch of the group's master; returns the function that stops it. */
  add(listener: (s: MasterSwitch) => void): () => void {
    this.listeners.add(listener);
    if (this.subscribers.length === 0) this.start();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.stop();
    };
  }

  private start(): void {
    const o = this.options;
    for (const s of o.sentinels ?? []) {
      const sub = new Redis({
        host: s.host ?? "127.0.0.1",
        port: s.port ?? DEFAULT_SENTINEL_PORT,
        ...(o.sentinelUsername !== undefined ? { username: o.sentinelUsername } : {}),
        ...(o.sentinelPassword !== undefined ? { password: o.sentinelPassword } : {}),
        // As ioredis' own connections to the Sentinels (sentinelTLS, whatever enableTLSForSentinelMode).
        ...(o.sentinelTLS !== undefined ? { tls: o.sentinelTLS } : {}),
        enableReadyCheck: false,
        connectTimeout: 3000,
        maxRetriesPerRequest: null,
        retryStrategy: (times: number) => Math.min(times * 200, 2000),
      });
      sub.on("error", () => undefined);
      // "connect" is emitted once TCP (and TLS) is up, for plain and TLS streams alike.
      sub.on("connect", () => (sub.stream as Socket).unref());
      sub.on("message", (_channel: string, message: string) => this.heard(message));
      sub.subscribe("+switch-master").catch(() => undefined);
      this.subscribers.push(sub);
    }
  }

  private stop(): void {
    for (const sub of this.subscribers) sub.disconnect();
    this.subscribers = [];
    SwitchWatch.groups.delete(this.key);
  }

  /** `<master name> <old ip> <old port> <new ip> <new port>` */
  private heard(message: string): void {
    const [name, , , host, port] = message.split(" ");
    if (name !== this.options.name || host === undefined || port === undefined) return;
    const now = Date.now();
    const last = this.latest;
    if (last !== undefined && last.host === host && last.port === Number(port) && now - last.at < 10_000) return;
    const s = { host, port: Number(port), at: now };
    this.latest = s;
    for (const l of [...this.listeners]) l(s);
  }
}

function connectedTo(stream: Socket, s: MasterSwitch): boolean {
  return stream.remotePort === s.port && (stream.remoteAddress === s.host || stream.remoteAddress === `::ffff:${s.host}`);
}

/**
 * Keeps an 'error' listener on a connection for its whole life. ioredis listens for a
 * connection's errors with `once` in places: a second error (a TLS alert after a reset, say)
 * would then be an uncaught exception that ends the process. ioredis still sees the errors it
 * listens for; this one only keeps the rest from killing us.
 */
function guardErrors(stream: Socket): void {
  stream.on("error", () => undefined);
}

/**
 * ioredis' Sentinel connector with a failover detection that cannot kill the client: when the
 * Sentinels announce a new master it destroys the connection (if it is not already to the new
 * master), and ioredis reconnects as after any dropped connection, asking the Sentinels again. A
 * connection attempt that was under way during the announcement is checked once connected. It
 * never calls `disconnect()`, which is what ends a client whose reconnect is under way. Used
 * through {@link redisClientOptions} (`Connector`), so `duplicate()`d clients have it too.
 */
export class FailoverAwareSentinelConnector extends SentinelConnector {
  private unwatch: (() => void) | undefined;

  /** `options` are ioredis' (a Connector receives the client's whole options object). */
  constructor(options: unknown) {
    super(options as SentinelConnectionOptions);
  }

  override async connect(eventEmitter: Parameters<SentinelConnector["connect"]>[0]): Promise<Socket> {
    const watch = SwitchWatch.of(this.options);
    this.unwatch ??= watch.add((s) => {
      const stream = this.stream as Socket | undefined;
      if (stream !== undefined && !stream.destroyed && !stream.connecting && !connectedTo(stream, s)) stream.destroy();
    });
    const began = Date.now();
    const stream = (await super.connect(eventEmitter)) as Socket;
    const check = (): void => {
      const s = watch.latest;
      if (s !== undefined && s.at >= began && !connectedTo(stream, s)) stream.destroy();
    };
    if (stream.connecting) stream.once("connect", check);
    else check();
    return stream;
  }

  override disconnect(): void {
    super.disconnect();
    this.unwatch?.();
    this.unwatch = undefined;
  }
}

/**
 * The error itself (changed in place, along its `cause` chain), with the credentials among the
 * arguments of a failed AUTH or HELLO replaced by `***`: ioredis attaches the command a reply
 * error answers to the error (`err.command.args`), which for a refused login holds the user name
 * and password — and an error is logged whole (`log.warn({ err })` serializes every property).
 */
function withoutCredentials<T>(err: T): T {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const command = (e as { command?: unknown }).command;
    if (typeof command !== "object" || command === null) continue;
    const c = command as { name?: unknown; args?: unknown };
    const name = typeof c.name === "string" ? c.name.toLowerCase() : "";
    if (!Array.isArray(c.args)) continue;
    const args: unknown[] = c.args;
    // AUTH [user] password; HELLO protover [AUTH user password] [SETNAME name]
    const auth = name === "auth" ? -1 : name === "hello" ? args.findIndex((a) => String(a).toUpperCase() === "AUTH") : -2;
    if (auth === -1) c.args = args.map(() => "***");
    else if (auth >= 0) c.args = args.map((a, i) => (i === auth + 1 || i === auth + 2 ? "***" : a));
  }
  return err;
}

/**
 * An ioredis client whose errors never carry a password (see {@link withoutCredentials}): a login
 * refused during the connection handshake fails the queued commands and is emitted as "error"
 * through the two methods overridden here. `duplicate()` makes another such client.
 */
class CredentialSafeRedis extends Redis {
  // ioredis' overloads (url and options, or options alone) are all this takes.
  constructor(urlOrOptions: string | RedisClientOptions, options: RedisClientOptions = {}) {
    if (typeof urlOrOptions === "string") super(urlOrOptions, options);
    else super(urlOrOptions);
    // Every connection the client's connector makes gets guardErrors (see there).
    const connector = (this as unknown as { connector: { connect: (e: unknown) => Promise<Socket> } }).connector;
    const connect = connector.connect.bind(connector);
    connector.connect = async (eventEmitter) => {
      const stream = await connect(eventEmitter);
      guardErrors(stream);
      return stream;
    };
  }

  override silentEmit(eventName: string, arg?: unknown): boolean {
    return super.silentEmit(eventName, eventName === "error" ? withoutCredentials(arg) : arg);
  }

  override recoverFromFatalError(...[commandError, err, options]: Parameters<Redis["recoverFromFatalError"]>): void {
    super.recoverFromFatalError(withoutCredentials(commandError), withoutCredentials(err), options);
  }

  override duplicate(override: RedisClientOptions = {}): Redis {
    // Our clients keep ioredis' default reply shapes ("legacy"), as RedisClientOptions says.
    const { replyMapping: _legacy, ...options } = this.options;
    return new CredentialSafeRedis({ ...options, ...override });
  }
}

/**
 * Creates an ioredis client for the `--redis` setting `url` (see {@link parseRedisUrl}) with
 * {@link redisClientOptions}; `overrides` are the caller's own options, `tls` the files of a
 * private CA and a client certificate for `rediss://` and `rediss-sentinel://` (read now). Throws
 * on a bad URL, on TLS files with a URL without TLS and on an unreadable file, never quoting a
 * password. The client's errors (events and rejected commands) carry no password either.
 */
export function createRedis(url: string, overrides: RedisClientOptions = {}, tls?: RedisTls): Redis {
  const target = parseRedisUrl(url);
  const options = redisClientOptions(target, overrides, tls);
  return target.kind === "standalone" ? new CredentialSafeRedis(target.url, options) : new CredentialSafeRedis(options);
}

/** Options of {@link ReplicaWaiter}. */
export interface ReplicaWaiterOptions {
  /** How many replicas must acknowledge (WAIT's numreplicas); at least 1. */
  replicas: number;
  /** How long to wait for them, in ms (WAIT's timeout); at least 1: Redis reads 0 as forever. */
  timeoutMs: number;
  /** What the writes made, for error messages. @default "the write" */
  subject?: string | undefined;
  /** Called with how long each WAIT took (the Redis latency metric, op "Wait"). */
  onCall?: ((op: string, seconds: number) => void) | undefined;
}

/** Proof that no reconnect happened since {@link ReplicaWaiter.begin}: pass it to `confirm`. */
export type ReplicaTicket = number;

interface Waiter {
  ticket: ReplicaTicket;
  resolve: () => void;
  reject: (err: ConnectError) => void;
}

/**
 * WAIT-based durability on one ioredis connection: writes made on that connection between
 * {@link begin} and {@link confirm} are acknowledged by at least `replicas` replicas before
 * `confirm` resolves, or `confirm` fails with UNAVAILABLE, a `retry-after` header and the
 * DEPENDENCY_UNAVAILABLE marker (the writes were applied on the master but may be lost in a
 * failover). Redis' WAIT covers every write made
 * on the connection before it, so it must run on the connection that wrote, and only while that
 * connection was not re-established in between (a WAIT resent to a new master after a failover
 * would confirm nothing): a reconnect in between fails the call.
 *
 * WAIT blocks its connection until it returns, so callers share rounds: at most one WAIT is in
 * flight, and every `confirm` that arrives meanwhile joins the next one. After a round found too
 * few replicas, later calls first ask ROLE (which does not block) how many replicas are
 * connected: `begin` then refuses at once, before anything is written, and `confirm` fails
 * without waiting, until enough replicas are back — so a lost replica costs one WAIT timeout on
 * the connection, not one per call. Replicas that are connected but slower than the timeout still
 * cost a timeout per round.
 */
export class ReplicaWaiter {
  private readonly replicas: number;
  private readonly timeoutMs: number;
  private readonly subject: string;
  private readonly onCall: ((op: string, seconds: number) => void) | undefined;
  /** Connections closed so far: a ticket is valid while this has not moved. */
  private closes = 0;
  /** The last round found fewer replicas than needed. */
  private short = false;
  private running = false;
  private queued: Waiter[] = [];
  private probe: Promise<number> | undefined;

  constructor(
    private readonly redis: Redis,
    opts: ReplicaWaiterOptions,
  ) {
    if (!Number.isInteger(opts.replicas) || opts.replicas < 1) throw new RangeError("replicas must be an integer ≥ 1");
    if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs < 1) throw new RangeError("timeoutMs must be an integer ≥ 1");
    this.replicas = opts.replicas;
    this.timeoutMs = opts.timeoutMs;
    this.subject = opts.subject ?? "the write";
    this.onCall = opts.onCall;
    redis.on("close", () => {
      this.closes++;
    });
  }

  /**
   * Call before writing. Returns the ticket for {@link confirm}; refuses with UNAVAILABLE (nothing
   * written yet) while the last round found too few replicas and ROLE still shows too few.
   */
  async begin(): Promise<ReplicaTicket> {
    if (this.short) {
      let connected: number;
      try {
        connected = await this.connectedReplicas();
      } catch (err) {
        throw unavailable("could not ask Redis how many replicas are connected: nothing was stored; retry later", err);
      }
      if (connected < this.replicas) {
        throw unavailable(
          `${connected} of the ${this.replicas} Redis replicas required are connected: nothing was stored; retry later`,
        );
      }
    }
    return this.closes;
  }

  /**
   * Call after the writes (their replies received). Resolves once `replicas` replicas have them;
   * fails with UNAVAILABLE otherwise (the writes may have been applied).
   */
  confirm(ticket: ReplicaTicket): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queued.push({ ticket, resolve, reject });
      if (!this.running) void this.rounds();
    });
  }

  private async rounds(): Promise<void> {
    this.running = true;
    try {
      while (this.queued.length > 0) {
        // Every waiter here had its writes answered before this WAIT is sent, so it covers them.
        const waiters = this.queued;
        this.queued = [];
        const outcome = await this.round();
        const closes = this.closes;
        for (const w of waiters) {
          if (outcome.ok && w.ticket === closes) w.resolve();
          else w.reject(outcome.ok ? this.reconnected() : outcome.error);
        }
      }
    } finally {
      this.running = false;
    }
  }

  private async round(): Promise<{ ok: true } | { ok: false; error: ConnectError }> {
    if (this.short) {
      const connected = await this.connectedReplicas().catch(() => 0);
      if (connected < this.replicas) {
        return { ok: false, error: this.unconfirmed(`${connected} of ${this.replicas} replicas connected`) };
      }
    }
    const started = performance.now();
    let acked: number;
    try {
      acked = Number(await this.redis.wait(this.replicas, this.timeoutMs));
    } catch (err) {
      return { ok: false, error: this.unconfirmed(`WAIT failed: ${(err as Error).message}`, err) };
    } finally {
      this.onCall?.("Wait", (performance.now() - started) / 1000);
    }
    this.short = acked < this.replicas;
    if (this.short) {
      return {
        ok: false,
        error: this.unconfirmed(`${acked} of ${this.replicas} replicas acknowledged within ${this.timeoutMs} ms`),
      };
    }
    return { ok: true };
  }

  /** Replicas connected to the master, by ROLE (never blocks); one query shared by callers. */
  private connectedReplicas(): Promise<number> {
    this.probe ??= this.redis
      .role()
      .then((r) => (r[0] === "master" && Array.isArray(r[2]) ? r[2].length : 0))
      .finally(() => {
        this.probe = undefined;
      });
    return this.probe;
  }

  private unconfirmed(why: string, cause?: unknown): ConnectError {
    return unavailable(
      `Redis replication not confirmed (${why}): ${this.subject} may have been stored; retry with the same idempotency key`,
      cause,
    );
  }

  private reconnected(): ConnectError {
    return this.unconfirmed("the Redis connection was re-established during the call");
  }
}

/**
 * UNAVAILABLE with a retry hint (1 s), marked DEPENDENCY_UNAVAILABLE (dependency "redis"): the
 * replica that answers it is healthy, the Redis replicas are short, and every scheduler replica
 * shares them — a gateway relays it rather than count it against the replica or try another.
 */
function unavailable(message: string, cause?: unknown): ConnectError {
  return unavailableError(message, DEPENDENCY_RETRY_AFTER_MS, { reason: DEPENDENCY_UNAVAILABLE, metadata: { dependency: "redis" }, cause });
}
