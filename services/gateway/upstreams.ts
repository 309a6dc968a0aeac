import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import type { MeshRole } from "../../lib/mesh-identity.js";
import { meshTransport, type MeshSecurity } from "../../lib/mesh-security.js";
import { isDependencyUnavailable, unavailable } from "../../lib/errors.js";
import { ChannelFailure, GrpcChannel } from "../../lib/grpc-channel.js";
import type { ServiceRecord } from "../../lib/keys.js";
import type { MembershipEvents } from "../../lib/membership.js";

/**
 * The replica-health settings of the gateway's internal hops. A silent peer (stopped process,
 * wedged event loop) is found by HTTP/2 pings: with 1000/1000 an unanswered ping fails the
 * connection 1–2 s after the peer fell silent (measured: 1.5 s grpc-js, 2.0 s connect-node on
 * this machine), and a new connection to such a peer fails after the connect timeout (1 s: a
 * loopback or LAN handshake plus SETTINGS takes well under 10 ms, and a scheduler busy with a
 * large batch answers within a few hundred). Shorter would fail healthy replicas during GC or
 * a long Lua call; longer would stretch writes moved away from a stopped replica.
 */
export const REPLICA_HEALTH = { pingIntervalMs: 1000, pingTimeoutMs: 1000, connectTimeoutMs: 1000 } as const;

/** How calls to the replicas of one internal service behave. */
export interface UpstreamPolicy {
  /** Consecutive replica failures that open a replica's breaker. @default 3 */
  breakerFailures?: number;
  /** First open period of a breaker: then one trial call goes through. @default 500 */
  halfOpenAfterMs?: number;
  /**
   * Longest open period: each failed trial doubles the period up to this, so a replica that
   * heals gets a trial call at most this long after (so it is served again within 2 s: this,
   * plus the trial call). @default 1500
   */
  maxHalfOpenAfterMs?: number;
  /** Deadline of a unary call, retries included (a caller's shorter deadline wins). @default 10000 */
  timeoutMs?: number;
  /** Extra attempts, each on another replica, for calls that are safe to repeat. @default 2 */
  retries?: number;
  /** The clock (ms) of the breakers; tests drive it. @default performance.now */
  now?: () => number;
}

/** The state of a replica's breaker. */
export type BreakerState = "closed" | "open" | "half-open";

/** Options for {@link ReplicaBreaker}. */
export interface ReplicaBreakerOptions {
  /** Consecutive failures that open it. */
  failures: number;
  /** First open period (ms). */
  openMs: number;
  /** Longest open period (ms): failed trials double the period up to this. */
  maxOpenMs: number;
  /** The clock (ms). */
  now: () => number;
}

/**
 * A circuit breaker for one replica, driven by time rather than by calls: `closed` until
 * `failures` replica failures in a row, then `open` for a period, then `half-open` — the next
 * call through is the one trial ({@link acquire} returns "trial"; others are refused while it
 * runs). A trial that succeeds closes it; one that fails opens it again for twice the period, up
 * to `maxOpenMs`; one that proves nothing (the caller gave up) lets the next call try. Any
 * success closes it, since the replica answered.
 */
export class ReplicaBreaker {
  private failures = 0;
  private openUntil = 0;
  private period: number;
  private opened = false;
  private trialInFlight = false;

  constructor(private readonly opts: ReplicaBreakerOptions) {
    this.period = opts.openMs;
  }

  /** The state now. */
  get state(): BreakerState {
    if (!this.opened) return "closed";
    return this.opts.now() >= this.openUntil ? "half-open" : "open";
  }

  /** When the breaker lets its next trial through (ms on its clock); 0 while closed. */
  get readyAt(): number {
    return this.opened ? this.openUntil : 0;
  }

  /** True when {@link acquire} would return "trial" now. */
  get trialDue(): boolean {
    return this.opened && !this.trialInFlight && this.opts.now() >= this.openUntil;
  }

  /**
   * Asks to make a call: "call" while closed, "trial" for the one trial of a half-open breaker,
   * undefined when refused (open, or a trial already runs).
   */
  acquire(): "call" | "trial" | undefined {
    if (!this.opened) return "call";
    if (!this.trialDue) return undefined;
    this.trialInFlight = true;
    return "trial";
  }

  /** The replica answered. */
  success(): void {
    this.failures = 0;
    this.opened = false;
    this.trialInFlight = false;
    this.period = this.opts.openMs;
  }

  /** The replica failed a call (`trial`: the trial call). */
  failure(trial: boolean): void {
    if (trial) {
      this.trialInFlight = false;
      this.period = Math.min(this.period * 2, this.opts.maxOpenMs);
      this.openUntil = this.opts.now() + this.period;
      return;
    }
    if (this.opened) return; // calls that started before it opened change nothing
    if (++this.failures >= this.opts.failures) {
      this.opened = true;
      this.openUntil = this.opts.now() + this.period;
    }
  }

  /** The call proved nothing about the replica (the caller cancelled, say). */
  release(trial: boolean): void {
    if (trial) this.trialInFlight = false;
  }
}

/** A connect transport and how to close its connection. */
export interface ReplicaTransport {
  transport: Transport;
  /** Closes the connection once calls in flight had a moment to finish. */
  close(): void;
}

/** What the byte-forwarding path needs of a channel (a {@link GrpcChannel}). */
export type ReplicaChannel = Pick<GrpcChannel, "unary" | "close">;

/** How {@link Upstreams} connects to a replica; tests replace it. */
export interface ReplicaConnector {
  transport(address: string): ReplicaTransport;
  channel(address: string): ReplicaChannel;
}

/**
 * The gateway's connections to the replicas of a service whose certificates hold `role`:
 * connect-node's gRPC transport and a GrpcChannel, both with {@link REPLICA_HEALTH} and the
 * gateway's mesh credentials (plaintext without).
 */
export function meshConnector(security: MeshSecurity | undefined, role: MeshRole): ReplicaConnector {
  return {
    transport(address) {
      // The session manager kept, so a replica that leaves or restarts can be closed.
      const { manager, transport } = meshTransport(security, address, [role], {
        pingIntervalMs: REPLICA_HEALTH.pingIntervalMs,
        pingTimeoutMs: REPLICA_HEALTH.pingTimeoutMs,
        // Pinged while idle too: a call then never waits for a stale connection to be verified.
        pingIdleConnection: true,
      });
      return {
        transport,
        // Calls in flight get a moment to finish (a replica may leave before it stops serving).
        close: () => setTimeout(() => manager.abort(new ConnectError("replica left", Code.Unavailable)), 2000).unref(),
      };
    },
    channel: (address) => new GrpcChannel(address, { ...REPLICA_HEALTH, ...(security !== undefined ? { security } : {}), peerRoles: [role] }),
  };
}

/** Plaintext connections (tests, and a mesh without mTLS or token on loopback). */
export const defaultConnector: ReplicaConnector = meshConnector(undefined, "scheduler");

/** What Upstreams follows: the members of a Membership. */
export interface UpstreamMembers {
  snapshot(): ReadonlyMap<string, ServiceRecord>;
  on<K extends keyof MembershipEvents<ServiceRecord>>(event: K, listener: (...args: MembershipEvents<ServiceRecord>[K]) => void): unknown;
}

interface Replica<S extends DescService> {
  /** The member id (its etcd key under the service's prefix). */
  id: string;
  address: string;
  record: ServiceRecord;
  client: Client<S>;
  transport: ReplicaTransport;
  /** For calls forwarded as bytes (the gateway's fast gRPC path); opened on first use. */
  channel: ReplicaChannel | undefined;
  breaker: ReplicaBreaker;
}

/** The caller of a call being forwarded: its signal and what is left of its deadline. */
export interface Caller {
  signal: AbortSignal;
  /** Milliseconds until the caller's deadline; undefined without one. */
  timeoutMs: number | undefined;
}

/** What an attempt's failure says (see {@link classify}). */
type Outcome =
  /** The caller went away or its own deadline passed: nobody's fault, nothing to retry. */
  | { kind: "caller"; error: ConnectError }
  /** The replica answered with a status: it is healthy. */
  | { kind: "answered"; error: ConnectError }
  /** The replica's dependency is down: relayed as it is, not the replica's fault, not retried. */
  | { kind: "dependency"; error: ConnectError }
  /** The replica is unreachable, died or is silent. `sent`: the request may have reached it. */
  | { kind: "replica"; error: ConnectError; sent: boolean; hung: boolean };

/** Node error codes of a connection that could not be made (nothing was sent). */
const UNSENT_CODES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);

function nodeCodes(err: unknown): string[] {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  for (let e = err; e instanceof Error && !seen.has(e) && seen.size < 8; e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
  }
  return codes;
}

/**
 * Classifies a failed attempt. `callerAborted`: the caller's signal fired; `deadline`: whose
 * deadline bounded this attempt ("caller" when the caller's was the shorter). A status sent by
 * the replica (it has `grpc-status` among its trailers) means it answered — unless it says
 * UNAVAILABLE without the dependency marker (it is shutting down or overloaded). A failure
 * below the status (refused, reset, lost connection, unanswered ping, our deadline) is the
 * replica's.
 */
function classify(err: unknown, callerAborted: boolean, deadline: "caller" | "policy"): Outcome {
  const e = ConnectError.from(err);
  if (callerAborted) return { kind: "caller", error: e };
  if (e.code === Code.DeadlineExceeded) {
    // The attempt's deadline passed (ours, or the server's copy of it).
    return deadline === "caller" ? { kind: "caller", error: e } : { kind: "replica", error: e, sent: true, hung: true };
  }
  if (isDependencyUnavailable(e)) return { kind: "dependency", error: e };
  if (e.cause instanceof ChannelFailure) {
    const f = e.cause;
    return { kind: "replica", error: e, sent: f.sent, hung: f.kind === "connect-timeout" || f.kind === "ping-timeout" };
  }
  if (e.metadata.has("grpc-status")) {
    if (e.code === Code.Unavailable) return { kind: "replica", error: e, sent: true, hung: false };
    return { kind: "answered", error: e };
  }
  // connect-node's transport: connection errors (ECONNREFUSED while connecting: nothing sent;
  // ECONNRESET mid-call, which it reports as ABORTED), "PING timed out", streams reset.
  const codes = nodeCodes(e.cause);
  const unsent = codes.length > 0 && codes.every((c) => UNSENT_CODES.has(c));
  return { kind: "replica", error: e, sent: !unsent, hung: /PING timed out/.test(e.rawMessage) };
}

/**
 * The replicas of one internal service, discovered through a Membership of
 * `/taskmesh/services/<name>/`: one HTTP/2 transport (and, for forwarded bytes, one GrpcChannel)
 * each, pinged so that a silent replica is found in about 2 s, and a {@link ReplicaBreaker} each.
 *
 * Calls go round-robin to replicas whose breaker is closed; a replica whose open period passed
 * gets the next call as its trial (the earliest first), so a healed replica is back in at most
 * `maxHalfOpenAfterMs`. Only the replica's own failures count against it: refused, reset or lost
 * connections, unanswered pings, the policy's deadline — never the caller's cancellation or
 * shorter deadline, an answer (any status), or an UNAVAILABLE marked DEPENDENCY_UNAVAILABLE
 * (relayed to the client as it is). A failed call moves on to a replica it has not tried yet
 * (so one call counts at most one failure per replica): any failure for calls that are safe to
 * repeat (`idempotent`: reads, idempotent writes, submits carrying a request id), only failures
 * before the request was sent for the others. All within one deadline. When no replica can be
 * tried the call fails at once with UNAVAILABLE and a retry hint; a replica that stayed silent
 * gives DEADLINE_EXCEEDED, one that could not be reached UNAVAILABLE.
 *
 * A replica that registers again with a different record (a restart under the same id) or
 * leaves gets its connections closed and, when it comes back, a fresh breaker.
 */
export class Upstreams<S extends DescService> {
  private readonly replicas = new Map<string, Replica<S>>();
  private cursor = 0;
  private readonly policy: Required<Omit<UpstreamPolicy, "now">>;
  private readonly now: () => number;

  constructor(
    private readonly service: S,
    private readonly name: string,
    private readonly members: UpstreamMembers,
    policy: UpstreamPolicy = {},
    private readonly connector: ReplicaConnector = defaultConnector,
  ) {
    this.policy = {
      breakerFailures: policy.breakerFailures ?? 3,
      halfOpenAfterMs: policy.halfOpenAfterMs ?? 500,
      maxHalfOpenAfterMs: policy.maxHalfOpenAfterMs ?? 1500,
      timeoutMs: policy.timeoutMs ?? 10_000,
      retries: policy.retries ?? 2,
    };
    this.now = policy.now ?? (() => performance.now());
    members.on("put", (id, record) => {
      const known = this.replicas.get(id);
      if (known !== undefined && !sameInstance(known.record, record)) this.drop(id);
    });
    members.on("delete", (id) => this.drop(id));
  }

  /** How many instances are known. */
  get size(): number {
    return this.members.snapshot().size;
  }

  /** Breaker states by replica address (for metrics and tests). */
  breakerStates(): Map<string, BreakerState> {
    return new Map([...this.replicas.values()].map((r) => [r.address, r.breaker.state]));
  }

  private drop(id: string): void {
    const r = this.replicas.get(id);
    if (r === undefined) return;
    this.replicas.delete(id);
    r.channel?.close();
    r.transport.close();
  }

  private replica(id: string, record: ServiceRecord): Replica<S> {
    let r = this.replicas.get(id);
    if (r !== undefined && !sameInstance(r.record, record)) {
      this.drop(id);
      r = undefined;
    }
    if (r === undefined) {
      const transport = this.connector.transport(record.address);
      r = {
        id,
        address: record.address,
        record,
        transport,
        client: createClient(this.service, transport.transport),
        channel: undefined,
        breaker: new ReplicaBreaker({
          failures: this.policy.breakerFailures,
          openMs: this.policy.halfOpenAfterMs,
          maxOpenMs: this.policy.maxHalfOpenAfterMs,
          now: this.now,
        }),
      };
      this.replicas.set(id, r);
    }
    return r;
  }

  /**
   * The replica for the next attempt, not one of `tried`: a replica due for its trial (the one
   * whose open period ended first), else the next closed one round-robin; or UNAVAILABLE.
   */
  private pick(tried: ReadonlySet<string>): { replica: Replica<S>; trial: boolean } {
    const all = [...this.members.snapshot()];
    if (all.length === 0) throw unavailable(`no ${this.name} instance is registered`, this.policy.halfOpenAfterMs);
    const start = this.cursor++;
    let due: Replica<S> | undefined;
    let closed: Replica<S> | undefined;
    let soonest = Infinity;
    for (let i = 0; i < all.length; i++) {
      const [id, record] = all[(start + i) % all.length] as [string, ServiceRecord];
      const r = this.replica(id, record);
      if (tried.has(id)) continue;
      const b = r.breaker;
      if (b.trialDue) {
        if (due === undefined || b.readyAt < due.breaker.readyAt) due = r;
      } else if (b.state === "closed") {
        closed ??= r;
      } else {
        soonest = Math.min(soonest, b.readyAt);
      }
    }
    const chosen = due ?? closed;
    const permit = chosen?.breaker.acquire();
    if (chosen !== undefined && permit !== undefined) return { replica: chosen, trial: permit === "trial" };
    const wait = Number.isFinite(soonest) ? Math.max(0, soonest - this.now()) : this.policy.halfOpenAfterMs;
    throw unavailable(`every ${this.name} instance is failing`, wait);
  }

  /**
   * Runs a unary call `fn` on a replica with the connect client, the caller's signal and the
   * attempt's deadline (what is left of the call's). `idempotent` calls (safe to repeat) move on to
   * another replica after any replica failure; the others only when the request was surely not
   * sent. `caller` is the call being served: its cancellation and deadline are its own.
   */
  call<T>(
    fn: (client: Client<S>, opts: { signal: AbortSignal; timeoutMs: number }) => Promise<T>,
    idempotent: boolean,
    caller?: Caller,
  ): Promise<T> {
    const signal = caller?.signal ?? new AbortController().signal;
    return this.run((r, timeoutMs) => fn(r.client, { signal, timeoutMs }), idempotent, caller);
  }

  /**
   * Forwards an encoded unary request to `path` on a replica and resolves with the encoded
   * response: {@link call}'s policies without decoding anything. `signal` is the caller's (its
   * client going away); `timeoutMs` is what is left of the caller's deadline.
   */
  callRaw(
    path: string,
    message: Uint8Array,
    headers: Record<string, string>,
    idempotent: boolean,
    signal: AbortSignal,
    timeoutMs?: number,
  ): Promise<Uint8Array> {
    return this.run(
      (r, attemptMs) => {
        r.channel ??= this.connector.channel(r.address);
        return r.channel.unary(path, message, headers, attemptMs, signal);
      },
      idempotent,
      { signal, timeoutMs },
    );
  }

  /**
   * The attempts of one call. `fn` makes one attempt on a replica within `timeoutMs` (the client
   * or channel enforces it: a DEADLINE_EXCEEDED then), cancelled by the caller's signal.
   */
  private async run<T>(
    fn: (replica: Replica<S>, timeoutMs: number) => Promise<T>,
    idempotent: boolean,
    caller: Caller | undefined,
  ): Promise<T> {
    const callerMs = caller?.timeoutMs;
    const deadlineBy: "caller" | "policy" = callerMs !== undefined && callerMs <= this.policy.timeoutMs ? "caller" : "policy";
    const budget = Math.min(callerMs ?? Infinity, this.policy.timeoutMs);
    const end = performance.now() + budget;
    const tried = new Set<string>();
    let last: Outcome | undefined;
    for (let attempt = 0; attempt <= this.policy.retries; attempt++) {
      if (caller?.signal.aborted === true) throw callerError(caller.signal);
      const left = end - performance.now();
      if (left <= 0) break;
      let picked;
      try {
        picked = this.pick(tried);
      } catch (err) {
        // Nothing left to try: the last replica's failure says more than "none left".
        if (last !== undefined) break;
        throw err;
      }
      const { replica, trial } = picked;
      tried.add(replica.id);
      try {
        const out = await fn(replica, Math.max(1, Math.floor(left)));
        replica.breaker.success();
        return out;
      } catch (err) {
        // Every deadline an attempt can meet (ours, the client's copy, the server's) is `left`.
        const outcome = classify(err, callerGone(caller), deadlineBy);
        switch (outcome.kind) {
          case "caller":
            replica.breaker.release(trial);
            if (caller !== undefined && callerGone(caller)) throw callerError(caller.signal);
            throw new ConnectError(`the call's deadline passed before ${this.name} answered`, Code.DeadlineExceeded);
          case "answered":
            replica.breaker.success();
            throw outcome.error;
          case "dependency":
            replica.breaker.success(); // it answered: its dependency is what failed
            throw outcome.error;
          case "replica":
            replica.breaker.failure(trial);
            last = outcome;
            if (!(idempotent || !outcome.sent)) break;
            await backoff(attempt, end, caller?.signal);
            continue;
        }
        break;
      }
    }
    throw this.failed(last);
  }

  /** The error for a call whose every attempt failed as a replica failure (`last` the final one). */
  private failed(last: Outcome | undefined): ConnectError {
    if (last === undefined || last.kind !== "replica") {
      return new ConnectError(`${this.name} did not answer in ${this.policy.timeoutMs} ms`, Code.DeadlineExceeded);
    }
    if (last.hung) {
      return new ConnectError(`${this.name} did not answer: ${last.error.rawMessage}`, Code.DeadlineExceeded, undefined, undefined, last.error);
    }
    return unavailable(`${this.name} unavailable: ${last.error.rawMessage}`, this.policy.halfOpenAfterMs, { cause: last.error });
  }

  /**
   * The error of a server stream that failed: as it is when the replica sent it (a status) or
   * the caller ended it; when the connection broke under it (connect-node reports a reset as
   * ABORTED "read ECONNRESET"), UNAVAILABLE with a retry hint — the client watches again.
   */
  streamError(err: unknown, caller: AbortSignal): ConnectError {
    const e = ConnectError.from(err);
    if (caller.aborted || e.metadata.has("grpc-status") || isDependencyUnavailable(e)) return e;
    if (e.code === Code.Unavailable && e.details.length > 0) return e; // refused by pick(): has its hint
    return unavailable(`${this.name} stream lost: ${e.rawMessage}`, this.policy.halfOpenAfterMs, { cause: e });
  }

  /**
   * A client for a server stream (streams are not retried) on the next replica whose breaker is
   * closed, else on one whose open period passed (without taking the trial: a stream's outcome
   * comes too late to judge the replica by, and unary calls still do).
   */
  stream(): Client<S> {
    const all = [...this.members.snapshot()];
    if (all.length === 0) throw unavailable(`no ${this.name} instance is registered`, this.policy.halfOpenAfterMs);
    const start = this.cursor++;
    let halfOpen: Replica<S> | undefined;
    for (let i = 0; i < all.length; i++) {
      const [id, record] = all[(start + i) % all.length] as [string, ServiceRecord];
      const r = this.replica(id, record);
      const state = r.breaker.state;
      if (state === "closed") return r.client;
      if (state === "half-open") halfOpen ??= r;
    }
    if (halfOpen !== undefined) return halfOpen.client;
    throw unavailable(`every ${this.name} instance is failing`, this.policy.halfOpenAfterMs);
  }

  /** Closes every replica's connections. */
  close(): void {
    for (const id of [...this.replicas.keys()]) this.drop(id);
  }
}

/** True when two records describe the same running process (a restart changes pid or start time). */
function sameInstance(a: ServiceRecord, b: ServiceRecord): boolean {
  return a.id === b.id && a.address === b.address && a.pid === b.pid && a.started === b.started && a.host === b.host;
}

/** True once the caller's signal fired (a function: it changes while a call is awaited). */
function callerGone(caller: Caller | undefined): boolean {
  return caller?.signal.aborted === true;
}

/** The caller's own end: DEADLINE_EXCEEDED when its deadline passed, else CANCELED. */
function callerError(signal: AbortSignal): ConnectError {
  const reason: unknown = signal.reason;
  if (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) return reason;
  return ConnectError.from(reason ?? "the caller cancelled the call", Code.Canceled);
}

/** Waits before the next attempt (exponential with full jitter: up to 20, 40… ms), within the deadline. */
async function backoff(attempt: number, end: number, signal: AbortSignal | undefined): Promise<void> {
  const ms = Math.min(Math.random() * 20 * 2 ** attempt, 200, Math.max(0, end - performance.now()));
  if (ms < 1) return;
  await new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
