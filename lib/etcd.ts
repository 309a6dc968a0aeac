/**
 * The etcd client every taskmesh process uses: etcd3's client with deadlines on every unary call
 * and a health probe per cluster member, so that one member that stops answering (a black-holed
 * host, a frozen process, a member cut off from its peers) costs about a second instead of every
 * lease and watch that happened to run through it. See docs/failures.md.
 */
import { Etcd3, GRPCUnavailableError, type IOptions } from "etcd3";
import { ExponentialBackoff, noop, type IBackoff, type IDefaultPolicyContext, type IPolicy } from "cockatiel";
import type { Logger } from "./logger.js";

/** Options for {@link createEtcd}. */
export interface EtcdClientOptions {
  /** Members' client endpoints, `host:port` (or `http://host:port`). */
  endpoints: readonly string[];
  /** Deadline of every unary call (streams have none). @default 5000 */
  callTimeoutMs?: number;
  /** How often each member is probed (a probe that fails is followed by the next at once). @default 300 */
  probeIntervalMs?: number;
  /** How long a probe may take before it counts as failed. @default 500 */
  probeTimeoutMs?: number;
  /** Consecutive failed probes that make a member unhealthy (one success makes it healthy). @default 2 */
  probeFailures?: number;
  /** The key probes read (a linearizable read: only a member in touch with a quorum answers). @default "/taskmesh-probe" */
  probeKey?: string;
  /** Called when a member's health changes (metrics). */
  onMemberHealth?: (endpoint: string, healthy: boolean) => void;
  logger: Logger;
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
    const endpoints = opts.endpoints.map((e) => e.replace(/^https?:\/\//, ""));
    if (endpoints.length === 0) throw new Error("etcd: no endpoint given");
    const callTimeoutMs = opts.callTimeoutMs ?? 5000;
    const guards = new Map<string, MemberGuard>();
    const anotherHealthy = (self: MemberGuard): boolean => [...guards.values()].some((g) => g !== self && g.healthy);
    for (const e of endpoints) guards.set(e, new MemberGuard(e, anotherHealthy));
    const options: IOptions = {
      hosts: endpoints,
      dialTimeout: callTimeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: {
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
    this.probes = this.guards.map((guard) => ({
      guard,
      client: new Etcd3({ hosts: guard.endpoint, faultHandling: { host: () => noop, global: noop } }),
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
