/**
 * The etcd client every taskmesh process uses: etcd3's client with deadlines on every unary call
 * and a health probe per cluster member, so that one member that stops answering (a black-holed
 * host, a frozen process, a member cut off from its peers) costs about a second instead of every
 * lease and watch that happened to run through it. See docs/failures.md. With an
 * {@link EtcdSecurity}, every connection (the probes' too) is TLS, with a client certificate, an
 * etcd user, or both.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { connect as tlsConnect } from "node:tls";
import {
  Etcd3,
  EtcdAuthenticationFailedError,
  GRPCInvalidArgumentError,
  GRPCUnavailableError,
  isRecoverableError,
  type IOptions,
} from "etcd3";
import {
  ExponentialBackoff,
  handleWhen,
  noop,
  retry,
  type IBackoff,
  type IDefaultPolicyContext,
  type IPolicy,
} from "cockatiel";
import type { Logger } from "./logger.js";
import { as, type SettingSpec } from "./settings.js";

/** Options for {@link createEtcd}. */
export interface EtcdClientOptions {
  /**
   * Members' client endpoints, `host:port`, or `http://host:port` (plaintext) or
   * `https://host:port` (with `security.ca`).
   */
  endpoints: readonly string[];
  /**
   * TLS and etcd auth, used by every connection the client makes (its probes' too). Plaintext
   * without auth when absent.
   */
  security?: EtcdSecurity | undefined;
  /** Deadline of every unary call (streams have none). @default 5000 */
  callTimeoutMs?: number;
  /** How often each member is probed (a probe that fails is followed by the next at once). @default 300 */
  probeIntervalMs?: number;
  /** How long a probe may take before it counts as failed. @default 500 */
  probeTimeoutMs?: number;
  /** Consecutive failed probes that make a member unhealthy (one success makes it healthy). @default 2 */
  probeFailures?: number;
  /**
   * The key probes read (a linearizable read: only a member in touch with a quorum answers); with
   * etcd auth on, the user needs read permission on it. @default "/taskmesh-probe"
   */
  probeKey?: string;
  /** Called when a member's health changes (metrics). */
  onMemberHealth?: (endpoint: string, healthy: boolean) => void;
  logger: Logger;
}

/**
 * How a taskmesh process and etcd authenticate each other; everything is off when absent (an
 * empty string counts as absent). Files are read once, when the client is created.
 */
export interface EtcdSecurity {
  /** PEM file of the CA that signed etcd's server certificates: with it, every connection is TLS. */
  ca?: string;
  /**
   * PEM file of a client certificate (for etcd's `--client-cert-auth`); goes with `key` and needs
   * `ca`. With etcd auth on and no `username`, etcd takes the certificate's CN as the user.
   */
  cert?: string;
  /** PEM file of the private key of `cert`. */
  key?: string;
  /** etcd user (etcd auth); goes with `password`. */
  username?: string;
  /** Password of `username`. Never logged. */
  password?: string;
}

/**
 * Settings of {@link EtcdSecurity}, in the shape of lib/settings.ts's specs (spread them into a
 * service's settings and pass the values to {@link etcdSecurityFrom}). Empty means off.
 */
export const etcdSecuritySettings = {
  "etcd-ca": {
    env: "TASKMESH_ETCD_CA",
    default: "",
    parse: as.string,
    help: "PEM file of the CA of etcd's server certificates: talk to etcd over TLS (empty = plaintext)",
  },
  "etcd-cert": {
    env: "TASKMESH_ETCD_CERT",
    default: "",
    parse: as.string,
    help: "PEM client certificate for etcd's --client-cert-auth (with --etcd-key and --etcd-ca)",
  },
  "etcd-key": {
    env: "TASKMESH_ETCD_KEY",
    default: "",
    parse: as.string,
    help: "PEM private key of --etcd-cert",
  },
  "etcd-user": {
    env: "TASKMESH_ETCD_USER",
    default: "",
    parse: as.string,
    help: "etcd user, with --etcd-password (empty = no etcd auth)",
  },
  "etcd-password": {
    env: "TASKMESH_ETCD_PASSWORD",
    default: "",
    parse: as.string,
    help: "password of --etcd-user (prefer the env var: flags show in ps)",
  },
} satisfies Record<string, SettingSpec<string>>;

/** The values of {@link etcdSecuritySettings}. */
export type EtcdSecuritySettingValues = { [K in keyof typeof etcdSecuritySettings]: string };

/** A field of {@link EtcdSecurity}. */
type SecurityField = keyof EtcdSecurity;

/** Fails, naming the fields with `label`, unless the set fields of `s` make sense together. */
function checkSecurity(s: EtcdSecurity, label: (field: SecurityField) => string): void {
  const set = (f: SecurityField): boolean => (s[f] ?? "") !== "";
  if (set("cert") !== set("key")) {
    throw new Error(`etcd: ${label("cert")} and ${label("key")} go together (a client certificate and its private key)`);
  }
  if (set("cert") && !set("ca")) {
    throw new Error(`etcd: ${label("cert")} and ${label("key")} need ${label("ca")} (a client certificate is only sent over TLS)`);
  }
  if (set("username") !== set("password")) {
    throw new Error(`etcd: ${label("username")} and ${label("password")} go together`);
  }
}

const settingOf: Record<SecurityField, keyof EtcdSecuritySettingValues> = {
  ca: "etcd-ca",
  cert: "etcd-cert",
  key: "etcd-key",
  username: "etcd-user",
  password: "etcd-password",
};

/**
 * The {@link EtcdSecurity} of a service's settings (see {@link etcdSecuritySettings}), or
 * undefined when none is set. Throws, naming the flags, on a combination that cannot work: a
 * certificate without its key (or the reverse), a client certificate without `--etcd-ca`, a user
 * without a password (or the reverse).
 */
export function etcdSecurityFrom(settings: EtcdSecuritySettingValues): EtcdSecurity | undefined {
  const out: EtcdSecurity = {};
  for (const [field, name] of Object.entries(settingOf) as [SecurityField, keyof EtcdSecuritySettingValues][]) {
    const v = settings[name];
    if (v !== "") out[field] = v;
  }
  checkSecurity(out, (f) => `--${settingOf[f]}`);
  return Object.keys(out).length === 0 ? undefined : out;
}

/** TLS credentials as etcd3 takes them. */
type TlsCredentials = NonNullable<IOptions["credentials"]>;

/** What every Etcd3 instance of one client is given (TLS when `credentials` are). */
interface LoadedSecurity {
  credentials?: TlsCredentials;
  auth?: { username: string; password: string };
}

function readPem(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`etcd: cannot read ${what} ${path}: ${(err as Error).message}`);
  }
}

function parseCert(what: string, path: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new Error(`etcd: ${what} ${path} is not a PEM certificate: ${(err as Error).message}`);
  }
}

/** Reads and checks the files of `s` (once: etcd connections are not re-keyed). */
function loadSecurity(s: EtcdSecurity | undefined): LoadedSecurity {
  const value = (f: SecurityField): string | undefined => (s?.[f] ?? "") === "" ? undefined : s?.[f];
  checkSecurity(s ?? {}, (f) => `security.${f} (--${settingOf[f]})`);
  const ca = value("ca");
  const cert = value("cert");
  const key = value("key");
  const username = value("username");
  const password = value("password");
  const out: LoadedSecurity = {};
  if (ca !== undefined) {
    const rootCertificate = readPem("the CA certificate", ca);
    parseCert("the CA certificate", ca, rootCertificate);
    out.credentials = { rootCertificate };
    if (cert !== undefined && key !== undefined) {
      const certChain = readPem("the client certificate", cert);
      const privateKey = readPem("the client key", key);
      const x509 = parseCert("the client certificate", cert, certChain);
      let matches: boolean;
      try {
        matches = x509.checkPrivateKey(createPrivateKey(privateKey));
      } catch (err) {
        throw new Error(`etcd: the client key ${key} is not a PEM private key: ${(err as Error).message}`);
      }
      if (!matches) throw new Error(`etcd: the client key ${key} is not the key of the client certificate ${cert}`);
      out.credentials = { rootCertificate, certChain, privateKey };
    }
  }
  if (username !== undefined && password !== undefined) out.auth = { username, password };
  return out;
}

/**
 * An endpoint as `host:port`: `http://` and `https://` prefixes are dropped when they agree with
 * whether TLS is on (a mismatch is a mistake, not something to guess about).
 */
function bareEndpoint(endpoint: string, tls: boolean): string {
  const e = endpoint.trim().replace(/\/+$/, "");
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(e)?.[1]?.toLowerCase();
  if (scheme === undefined) return e;
  if (scheme === "https" && !tls) {
    throw new Error(`etcd: endpoint ${endpoint} is https but no CA is given (security.ca, --etcd-ca): give the CA of etcd's certificates`);
  }
  if (scheme === "http" && tls) {
    throw new Error(`etcd: endpoint ${endpoint} is http but TLS is on (security.ca, --etcd-ca): give host:port or https://host:port`);
  }
  if (scheme !== "http" && scheme !== "https") throw new Error(`etcd: endpoint ${endpoint}: expected host:port, http:// or https://`);
  return e.slice(scheme.length + 3);
}

/** Thrown (inside etcd3) for a call not sent to a member known to be unhealthy. */
class MemberUnhealthyError extends Error {
  constructor(endpoint: string) {
    super(`etcd member ${endpoint} is not answering`);
    this.name = "MemberUnhealthyError";
  }
}

/** What etcd3 returns from a streaming call: a grpc-js duplex stream. */
interface CallStream {
  cancel(): void;
  once(event: string, listener: () => void): unknown;
}

function isPromiseLike(x: unknown): x is PromiseLike<unknown> {
  return typeof x === "object" && x !== null && typeof (x as { then?: unknown }).then === "function";
}

function isCallStream(x: unknown): x is CallStream {
  return (
    typeof x === "object" &&
    x !== null &&
    typeof (x as Partial<CallStream>).cancel === "function" &&
    typeof (x as Partial<CallStream>).once === "function"
  );
}

const NEVER = new AbortController().signal;

/** An HTTP/2 client preface and an empty SETTINGS frame: etcd answers it once it accepted us. */
const H2_PREFACE = Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]);

/** Why a TLS connection failed (`secured`: after its handshake), in words an operator can act on. */
function tlsFailure(err: Error & { code?: string; reason?: string }, creds: TlsCredentials, host: string, secured: boolean): string {
  const code = err.code ?? "";
  const detail = err.reason ?? err.message;
  if (code.includes("ALERT")) {
    return creds.certChain === undefined
      ? `it requires a client certificate (security.cert and security.key, --etcd-cert and --etcd-key): ${detail}`
      : `it refused our client certificate (not signed by a CA it trusts, or expired): ${detail}`;
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return `its server certificate does not name ${host}: ${err.message}`;
  if (code.includes("CERT") || code.includes("VERIFY") || code.includes("ISSUER")) {
    return `its server certificate is not trusted (is security.ca, --etcd-ca, the CA of etcd's certificates?): ${err.message}`;
  }
  if (!secured && (code === "ECONNRESET" || code.includes("WRONG_VERSION_NUMBER") || code.includes("PACKET_LENGTH_TOO_LONG"))) {
    return `it does not speak TLS on that port (a plaintext member needs no --etcd-ca): ${detail}`;
  }
  return `TLS failed: ${detail}`;
}

/**
 * Opens a TLS connection to `endpoint` with the client's credentials, as gRPC would, and says
 * why the member refuses it; undefined when it accepts (it answered the HTTP/2 preface), when it
 * cannot be reached at all (no TLS matter) or when it does not answer within `timeoutMs`.
 */
function tlsRefusal(endpoint: string, creds: TlsCredentials, timeoutMs: number): Promise<string | undefined> {
  const colon = endpoint.lastIndexOf(":");
  const host = endpoint.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
  const port = Number(endpoint.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port)) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    let tcp = false;
    let secured = false;
    const socket = tlsConnect({
      host,
      port,
      ca: creds.rootCertificate,
      ...(creds.certChain !== undefined && creds.privateKey !== undefined ? { cert: creds.certChain, key: creds.privateKey } : {}),
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ALPNProtocols: ["h2"],
    });
    const done = (why: string | undefined): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(why);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    timer.unref();
    socket.once("connect", () => {
      tcp = true;
    });
    socket.once("secureConnect", () => {
      secured = true;
      socket.write(H2_PREFACE);
    });
    socket.once("data", () => done(undefined));
    // `on`: an error after the first (the write of the preface, say) must not go unhandled.
    socket.on("error", (err) => done(tcp ? tlsFailure(err, creds, host, secured) : undefined));
    socket.once("close", () =>
      done(!tcp ? undefined : secured ? "it closed the connection after the TLS handshake" : "it closed the connection during the TLS handshake"),
    );
  });
}

/**
 * etcd3's global policy (three attempts of a recoverable error: its default), whose final error
 * says what to fix when the cause is our credentials: grpc-js reports a refused TLS handshake as
 * "No connection established", often with "Last error: null", and etcd names no user when a
 * password is wrong. Covers every unary call, and the password-to-token exchange.
 */
class ExplainFailures implements IPolicy<IDefaultPolicyContext> {
  declare readonly _altReturn: never;
  private readonly inner = retry(handleWhen(isRecoverableError), { maxAttempts: 3 });
  readonly onSuccess = this.inner.onSuccess;
  readonly onFailure = this.inner.onFailure;
  /** Recent answers of {@link tlsRefusal} by member, so that a burst of failed calls costs one handshake. */
  private readonly recent = new Map<string, { at: number; why: Promise<string | undefined> }>();

  constructor(
    private readonly endpoints: readonly string[],
    private readonly security: LoadedSecurity,
    private readonly timeoutMs: number,
  ) {}

  /** Why `endpoint` refuses our TLS connection, if TLS is on and it does (see {@link tlsRefusal}). */
  refusal(endpoint: string): Promise<string | undefined> {
    const creds = this.security.credentials;
    if (creds === undefined) return Promise.resolve(undefined);
    const hit = this.recent.get(endpoint);
    if (hit !== undefined && Date.now() - hit.at < 2000) return hit.why;
    const why = tlsRefusal(endpoint, creds, this.timeoutMs);
    this.recent.set(endpoint, { at: Date.now(), why });
    return why;
  }

  async execute<T>(fn: (context: IDefaultPolicyContext) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> {
    try {
      return await this.inner.execute(fn, signal);
    } catch (err) {
      throw await this.explain(err);
    }
  }

  private async explain(err: unknown): Promise<unknown> {
    const user = this.security.auth?.username;
    if (err instanceof EtcdAuthenticationFailedError && user !== undefined) {
      return new EtcdAuthenticationFailedError(
        `etcd: user ${JSON.stringify(user)} cannot log in (security.username and security.password, --etcd-user and --etcd-password): ${err.message}`,
        { cause: err },
      );
    }
    if (err instanceof GRPCInvalidArgumentError && user === undefined && err.message.includes("user name is empty")) {
      return new GRPCInvalidArgumentError(
        `etcd: auth is on and no user is given (security.username and security.password, --etcd-user and --etcd-password): ${err.message}`,
        { cause: err },
      );
    }
    if (!(err instanceof GRPCUnavailableError) || !err.message.includes("No connection established")) return err;
    const byReason = new Map<string, string[]>();
    for (const [e, why] of await Promise.all(this.endpoints.map(async (e) => [e, await this.refusal(e)] as const))) {
      if (why !== undefined) byReason.set(why, [...(byReason.get(why) ?? []), e]);
    }
    if (byReason.size === 0) return err;
    const reasons = [...byReason].map(([why, members]) => `${members.length > 1 ? "members" : "member"} ${members.join(", ")}: ${why}`);
    // Still UNAVAILABLE (recoverable): another member, or a retry once etcd's configuration is fixed, may do.
    return new GRPCUnavailableError(`etcd: cannot connect over TLS: ${reasons.join("; ")}`, { cause: err });
  }
}

/**
 * etcd3's per-member fault policy, replaced: calls are not sent to an unhealthy member while
 * another member is healthy (etcd3 then tries the next member), and the streams a member carries
 * (watches, lease keepalives) are tracked so that they can be cancelled when it turns unhealthy:
 * etcd3 re-opens them on a healthy member.
 */
class MemberGuard implements IPolicy<IDefaultPolicyContext> {
  declare readonly _altReturn: never;
  readonly onSuccess = noop.onSuccess;
  readonly onFailure = noop.onFailure;
  healthy = true;
  private readonly streams = new Set<CallStream>();
  /** Rejects of the unary calls in flight on this member (to give up on them when it turns unhealthy). */
  private readonly calls = new Set<(err: Error) => void>();

  constructor(
    readonly endpoint: string,
    private readonly anotherHealthy: (self: MemberGuard) => boolean,
  ) {}

  async execute<T>(fn: (context: IDefaultPolicyContext) => PromiseLike<T> | T): Promise<T> {
    if (!this.healthy && this.anotherHealthy(this)) throw new MemberUnhealthyError(this.endpoint);
    const call = fn({ signal: NEVER });
    let giveUp: ((err: Error) => void) | undefined;
    const result = isPromiseLike(call)
      ? await Promise.race([
          Promise.resolve(call),
          new Promise<never>((_, reject) => {
            giveUp = reject;
            this.calls.add(reject);
          }),
        ]).finally(() => {
          if (giveUp !== undefined) this.calls.delete(giveUp);
        })
      : call;
    if (isCallStream(result)) {
      const stream = result;
      this.streams.add(stream);
      const forget = (): void => void this.streams.delete(stream);
      stream.once("status", forget);
      stream.once("close", forget);
      stream.once("error", forget);
    }
    return result;
  }

  /** Streams open on this member. */
  get streamCount(): number {
    return this.streams.size;
  }

  /**
   * Gives up on the unary calls in flight on this member: they fail as UNAVAILABLE (a recoverable
   * error: etcd3 retries them on another member). The requests themselves may still be applied;
   * etcd3 retries calls that hit their deadline the same way, and every write taskmesh makes is
   * a put, a delete or a compare-and-set, which a retry cannot apply twice.
   */
  abandonCalls(): number {
    const all = [...this.calls];
    this.calls.clear();
    for (const reject of all) reject(new GRPCUnavailableError(`etcd member ${this.endpoint} stopped answering`));
    return all.length;
  }

  /** Cancels every stream open on this member; returns how many. */
  cancelStreams(): number {
    const all = [...this.streams];
    this.streams.clear();
    for (const s of all) {
      try {
        s.cancel();
      } catch {
        // Already ended: nothing to cancel.
      }
    }
    return all.length;
  }
}

/**
 * An etcd3 client hardened for clusters: unary calls have a deadline (etcd3 then retries them on
 * another member), and each member is probed with a linearizable read; after `probeFailures`
 * failed probes a member is skipped by new calls, the unary calls in flight on it are retried on
 * another member and its open streams are cancelled, so that etcd3 re-opens them on a healthy
 * member — about 1.3 s after it stopped answering, inside a 2 s lease. With no healthy member at
 * all, calls go to every member as usual.
 */
export class EtcdClient extends Etcd3 {
  private readonly guards: MemberGuard[];
  private readonly probes: { guard: MemberGuard; client: Etcd3; failures: number; timer: NodeJS.Timeout | undefined }[];
  private closedClient = false;

  constructor(opts: EtcdClientOptions) {
    const security = loadSecurity(opts.security);
    const tls = security.credentials !== undefined;
    const endpoints = opts.endpoints.map((e) => bareEndpoint(e, tls));
    if (endpoints.length === 0) throw new Error("etcd: no endpoint given");
    // etcd3 connects with TLS when given credentials; the scheme is for its users' eyes.
    const host = (endpoint: string): string => (tls ? `https://${endpoint}` : endpoint);
    const secured: Pick<IOptions, "credentials" | "auth"> = {
      ...(security.credentials !== undefined ? { credentials: security.credentials } : {}),
      ...(security.auth !== undefined ? { auth: security.auth } : {}),
    };
    const callTimeoutMs = opts.callTimeoutMs ?? 5000;
    const guards = new Map<string, MemberGuard>();
    const anotherHealthy = (self: MemberGuard): boolean => [...guards.values()].some((g) => g !== self && g.healthy);
    for (const e of endpoints) guards.set(e, new MemberGuard(e, anotherHealthy));
    const explain = new ExplainFailures(endpoints, security, Math.min(callTimeoutMs, 2000));
    const options: IOptions = {
      ...secured,
      hosts: endpoints.map(host),
      dialTimeout: callTimeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: {
        global: explain,
        // etcd3 hands the host as given; the guard of its endpoint decides.
        host: (host) => guards.get(host.replace(/^https?:\/\//, "")) ?? new MemberGuard(host, anotherHealthy),
        // Watch streams reconnect within 2 s of etcd coming back, however long it was away
        // (etcd3's default backoff grows to 30 s).
        // (etcd3 declares an IBackoff but calls next() on it as on the factory it defaults to.)
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown>,
      },
      grpcOptions: {
        // A dead TCP connection is found even without probes (etcd's default minimum is 5 s).
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
      },
    };
    super(options);
    this.guards = [...guards.values()];
    const log = opts.logger.child({ component: "etcd" });
    const probeKey = opts.probeKey ?? "/taskmesh-probe";
    const timeoutMs = opts.probeTimeoutMs ?? 500;
    const intervalMs = opts.probeIntervalMs ?? 300;
    const needed = Math.max(1, opts.probeFailures ?? 2);
    const user = security.auth?.username;
    if (tls || user !== undefined) {
      // Never the password.
      log.info({ members: endpoints, tls, clientCertificate: security.credentials?.certChain !== undefined, user }, "etcd connections secured");
    }
    if (user !== undefined && !tls) log.warn({ user }, "etcd password sent without TLS");
    this.probes = this.guards.map((guard) => ({
      guard,
      // The same credentials and user as the calls, or a probe of a secured member fails however
      // well it answers. The token exchange gets the probe's deadline too.
      client: new Etcd3({
        ...secured,
        ...(security.auth !== undefined
          ? { auth: { ...security.auth, callOptions: () => ({ deadline: Date.now() + timeoutMs }) } }
          : {}),
        hosts: host(guard.endpoint),
        faultHandling: { host: () => noop, global: noop },
      }),
      failures: 0,
      timer: undefined,
    }));
    // Moves the streams and calls of every unhealthy member to the healthy ones, if any (which
    // may only become true later: when two members failed probes at once, say).
    const moveOff = (): { streams: number; calls: number } => {
      const moved = { streams: 0, calls: 0 };
      for (const g of this.guards) {
        if (g.healthy || !anotherHealthy(g)) continue;
        moved.streams += g.cancelStreams();
        moved.calls += g.abandonCalls();
      }
      return moved;
    };
    const setHealth = (p: (typeof this.probes)[number], healthy: boolean): void => {
      if (p.guard.healthy === healthy) return;
      p.guard.healthy = healthy;
      opts.onMemberHealth?.(p.guard.endpoint, healthy);
      const moved = moveOff();
      if (healthy) log.info({ member: p.guard.endpoint, streamsMoved: moved.streams, callsRetried: moved.calls }, "etcd member answers again");
      else {
        log.warn(
          { member: p.guard.endpoint, failedProbes: p.failures, streamsMoved: moved.streams, callsRetried: moved.calls },
          "etcd member not answering; avoiding it",
        );
        // A member that answers but refuses our credentials looks the same to the probe: say so.
        void explain.refusal(p.guard.endpoint).then((why) => {
          if (why !== undefined && !this.closedClient) log.error({ member: p.guard.endpoint, reason: why }, "cannot connect to etcd member over TLS");
        });
      }
    };
    // One probe of a member at a time: the next follows `intervalMs` after a success, at once
    // after a failure, so that a member that stopped answering is found `needed` deadlines after
    // it did (1.3 s with the defaults).
    const probe = (p: (typeof this.probes)[number]): void => {
      p.timer = undefined;
      if (this.closedClient) return;
      p.client
        .get(probeKey)
        .options({ deadline: Date.now() + timeoutMs })
        .then(
          () => {
            p.failures = 0;
            setHealth(p, true);
            return intervalMs;
          },
          () => {
            p.failures++;
            if (p.failures >= needed) setHealth(p, false);
            return 0;
          },
        )
        .then((wait) => {
          if (this.closedClient) return;
          p.timer = setTimeout(() => probe(p), wait);
          p.timer.unref();
        });
    };
    // With a single member there is nowhere else to go: no probes.
    if (this.probes.length > 1) for (const p of this.probes) probe(p);
  }

  /** Members by endpoint and whether they answer probes. */
  memberHealth(): Map<string, boolean> {
    return new Map(this.guards.map((g) => [g.endpoint, g.healthy]));
  }

  /** How many streams (watches, lease keepalives) each member carries now. */
  memberStreams(): Map<string, number> {
    return new Map(this.guards.map((g) => [g.endpoint, g.streamCount]));
  }

  /** Stops the probes and closes every connection (leases still need revoking first). */
  override close(): void {
    if (this.closedClient) return;
    this.closedClient = true;
    for (const p of this.probes) {
      clearTimeout(p.timer);
      p.client.close();
    }
    super.close();
  }
}

/** Creates the etcd client of a taskmesh process (see {@link EtcdClient}). */
export function createEtcd(opts: EtcdClientOptions): EtcdClient {
  return new EtcdClient(opts);
}
