import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  ExponentialBackoff,
  TimeoutStrategy,
  circuitBreaker,
  handleWhen,
  retry,
  timeout,
  wrap,
  type CircuitBreakerPolicy,
} from "cockatiel";
import { GrpcChannel } from "../../lib/grpc-channel.js";
import type { ServiceRecord } from "../../lib/keys.js";
import type { Membership } from "../../lib/membership.js";

/** How calls to the replicas of one internal service behave. */
export interface UpstreamPolicy {
  /** Consecutive UNAVAILABLE/DEADLINE_EXCEEDED failures that open a replica's breaker. @default 3 */
  breakerFailures?: number;
  /** How long an open breaker waits before letting one trial call through. @default 2000 */
  halfOpenAfterMs?: number;
  /** Deadline of a unary call. @default 10000 */
  timeoutMs?: number;
  /** Extra attempts for calls without side effects. @default 2 */
  retries?: number;
}

interface Replica<S extends DescService> {
  address: string;
  client: Client<S>;
  /** For calls forwarded as bytes (the gateway's fast gRPC path); opened on first use. */
  channel: GrpcChannel | undefined;
  breaker: CircuitBreakerPolicy;
}

/** Failures that say "this replica is not reachable or not answering". */
function replicaFailure(err: Error): boolean {
  return err instanceof ConnectError && (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded);
}

/**
 * The replicas of one internal service, discovered through a Membership of
 * `/taskmesh/services/<name>/`: round-robin over the live ones, one HTTP/2 transport each, and a
 * cockatiel circuit breaker per replica. Unary calls get a deadline; calls without side effects
 * are retried on another replica (exponential backoff with jitter) when one is unreachable; a
 * replica with an open breaker is skipped at once. With no replica usable the call fails with
 * UNAVAILABLE and a `retry-after` hint immediately, never hanging.
 */
export class Upstreams<S extends DescService> {
  private readonly replicas = new Map<string, Replica<S>>();
  private cursor = 0;
  private readonly policy: Required<UpstreamPolicy>;
  /** Deadline + retries on another replica when one is unreachable: for calls without side effects. */
  private readonly readPolicy;
  /** Deadline + moving on only when a breaker refused before anything was sent: for the others. */
  private readonly writePolicy;

  constructor(
    private readonly service: S,
    private readonly name: string,
    private readonly members: Membership<ServiceRecord>,
    policy: UpstreamPolicy = {},
    private readonly transport: (address: string) => Transport = (address) =>
      createGrpcTransport({ baseUrl: `http://${address}`, pingIntervalMs: 5000, pingTimeoutMs: 5000 }),
  ) {
    this.policy = {
      breakerFailures: policy.breakerFailures ?? 3,
      halfOpenAfterMs: policy.halfOpenAfterMs ?? 2000,
      timeoutMs: policy.timeoutMs ?? 10_000,
      retries: policy.retries ?? 2,
    };
    members.on("delete", (_id: string, r: ServiceRecord) => {
      this.replicas.get(r.address)?.channel?.close();
      this.replicas.delete(r.address);
    });
    // abortOnReturn off: aborting every finished call's signal builds a DOMException (with a stack
    // trace) per call — a tenth of the gateway's CPU per forwarded call in the profile.
    const deadline = timeout(this.policy.timeoutMs, { strategy: TimeoutStrategy.Aggressive, abortOnReturn: false });
    const backoff = new ExponentialBackoff({ initialDelay: 20, maxDelay: 200 });
    const retries = (idempotent: boolean) =>
      retry(
        handleWhen((err) => err instanceof BrokenCircuitError || (idempotent && replicaFailure(err))),
        { maxAttempts: this.policy.retries, backoff },
      );
    this.readPolicy = wrap(retries(true), deadline);
    this.writePolicy = wrap(retries(false), deadline);
  }

  /** How many instances are known. */
  get size(): number {
    return this.members.snapshot().size;
  }

  /** Breaker states by replica address (for metrics and tests). */
  breakerStates(): Map<string, CircuitState> {
    return new Map([...this.replicas].map(([a, r]) => [a, r.breaker.state]));
  }

  private replica(address: string): Replica<S> {
    let r = this.replicas.get(address);
    if (r === undefined) {
      r = {
        address,
        client: createClient(this.service, this.transport(address)),
        channel: undefined,
        breaker: circuitBreaker(handleWhen(replicaFailure), {
          halfOpenAfter: this.policy.halfOpenAfterMs,
          breaker: new ConsecutiveBreaker(this.policy.breakerFailures),
        }),
      };
      this.replicas.set(address, r);
    }
    return r;
  }

  /** The next replica whose breaker is not open, or UNAVAILABLE. */
  private next(): Replica<S> {
    const all = [...this.members.snapshot().values()];
    if (all.length === 0) throw this.unavailable(`no ${this.name} instance is registered`);
    for (let i = 0; i < all.length; i++) {
      const r = this.replica((all[this.cursor++ % all.length] as ServiceRecord).address);
      if (r.breaker.state !== CircuitState.Open) return r;
    }
    throw this.unavailable(`every ${this.name} instance is failing`);
  }

  private unavailable(message: string): ConnectError {
    return new ConnectError(message, Code.Unavailable, {
      "retry-after": String(Math.ceil(this.policy.halfOpenAfterMs / 1000)),
    });
  }

  /**
   * Runs a unary call `fn` on a replica. `idempotent` calls (no side effects) are retried on
   * other replicas when one fails as unreachable; other calls only move on when the replica's
   * breaker refused them before anything was sent.
   */
  async call<T>(fn: (client: Client<S>, signal: AbortSignal) => Promise<T>, idempotent: boolean): Promise<T> {
    return this.run((r, signal) => fn(r.client, signal), idempotent);
  }

  /**
   * Forwards an encoded unary request to `path` on a replica and resolves with the encoded
   * response: {@link call}'s policies without decoding anything. `signal` is the caller's (its
   * client going away); `timeoutMs` caps the upstream deadline below the policy's.
   */
  callRaw(
    path: string,
    message: Uint8Array,
    headers: Record<string, string>,
    idempotent: boolean,
    signal: AbortSignal,
    timeoutMs?: number,
  ): Promise<Uint8Array> {
    const deadline = Math.min(timeoutMs ?? Infinity, this.policy.timeoutMs);
    return this.run(
      (r) => {
        r.channel ??= new GrpcChannel(r.address);
        return r.channel.unary(path, message, headers, deadline, signal);
      },
      idempotent,
      signal,
    );
  }

  /** `caller`: the signal of the call being served, whose cancellation is not the replica's fault. */
  private async run<T>(
    fn: (replica: Replica<S>, signal: AbortSignal) => Promise<T>,
    idempotent: boolean,
    caller?: AbortSignal,
  ): Promise<T> {
    const policy = idempotent ? this.readPolicy : this.writePolicy;
    try {
      return await policy.execute(({ signal }) => {
        const r = this.next();
        return r.breaker.execute(() =>
          fn(r, signal).catch((err: unknown) => {
            // A call cut off by the replica's connection dying (not by us) reads as CANCELED
            // from the HTTP/2 stream: it is the replica being unavailable.
            if (err instanceof ConnectError && err.code === Code.Canceled && !signal.aborted && caller?.aborted !== true) {
              throw new ConnectError(`connection to ${this.name} ${r.address} lost`, Code.Unavailable);
            }
            throw err;
          }),
        );
      });
    } catch (err) {
      if (err instanceof BrokenCircuitError) throw this.unavailable(`every ${this.name} instance is failing`);
      if (err instanceof Error && err.name === "TaskCancelledError") {
        throw new ConnectError(`${this.name} did not answer in ${this.policy.timeoutMs} ms`, Code.DeadlineExceeded);
      }
      throw err;
    }
  }

  /** A client for a server stream on the next usable replica (streams are not retried). */
  stream(): Client<S> {
    return this.next().client;
  }

  /** Closes the byte-forwarding connections (connect transports close with the process). */
  close(): void {
    for (const r of this.replicas.values()) r.channel?.close();
  }
}
