import type { Etcd3, Lease } from "etcd3";
import type { Logger } from "./logger.js";

/** Options for {@link Registration.create}. */
export interface RegistrationOptions {
  /** etcd client; the registration does not close it. */
  client: Etcd3;
  /** Key to hold, e.g. `/taskmesh/workers/<id>`. */
  key: string;
  /** The value to write, read again on every (re-)registration and {@link Registration.update}. */
  value: () => object;
  /** Lease TTL: how long the key outlives this process once it stops keeping the lease alive. */
  ttlSeconds: number;
  /** Parent logger; the registration logs under a child with `component: "registration"`. */
  logger: Logger;
}

/** Backoff between re-registration attempts: full jitter over an exponential ceiling. */
const RETRY_MIN_MS = 200;
const RETRY_MAX_MS = 5_000;

/**
 * A key held under an etcd lease for as long as this process lives: how workers and services
 * announce themselves. The lease is kept alive by etcd3; when the process dies
 * the key disappears after the TTL, and `close()` revokes the lease so it disappears at once.
 *
 * If the lease is lost (etcd unreachable for longer than the TTL, or the lease revoked behind
 * our back), the registration logs a warning and registers again under a fresh lease, with
 * backoff, until it succeeds or is closed.
 */
export class Registration {
  /** The key this registration holds. */
  readonly key: string;
  private readonly client: Etcd3;
  private readonly value: () => object;
  private readonly ttl: number;
  private readonly log: Logger;

  /** The lease our key is known to be written under; undefined while re-registering. */
  private lease: Lease | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  /** The re-registration loop, while one runs. */
  private retrying: Promise<void> | undefined;
  /** Wakes the retry loop's backoff sleep early (on close). */
  private wake: (() => void) | undefined;
  /** update() was called while re-registering: write again once registered. */
  private dirty = false;

  private constructor(opts: RegistrationOptions) {
    this.client = opts.client;
    this.key = opts.key;
    this.value = opts.value;
    this.ttl = opts.ttlSeconds;
    this.log = opts.logger.child({ component: "registration", key: opts.key });
  }

  /**
   * Grants a lease (kept alive automatically) and puts the key under it. Rejects, leaving
   * nothing behind, if etcd cannot be reached: the caller decides whether to retry or exit.
   */
  static async create(opts: RegistrationOptions): Promise<Registration> {
    const r = new Registration(opts);
    await r.register();
    return r;
  }

  /** The etcd lease id the key is held under, or undefined while re-registering. */
  async leaseId(): Promise<string | undefined> {
    return this.lease?.grant();
  }

  /**
   * Rewrites the value (calls `value()` again) under the same lease. While re-registering it
   * only marks the value changed: the re-registration writes the latest value. Rejects when the
   * write fails for another reason than a lost lease.
   */
  async update(): Promise<void> {
    if (this.closed) return;
    const lease = this.lease;
    if (lease === undefined) {
      this.dirty = true;
      return;
    }
    try {
      await this.put(lease);
    } catch (err) {
      // A lost lease fires "lost" (and so a re-registration that writes the latest value).
      if (lease.revoked()) {
        this.dirty = true;
        return;
      }
      throw err;
    }
  }

  /**
   * Revokes the lease, which removes the key at once, and stops re-registering. `Etcd3.close()`
   * alone would not stop the keepalives. Safe to call twice; never rejects (if etcd cannot be
   * reached the key expires after the TTL, as keepalives have stopped).
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.retrying;
    const lease = this.lease;
    this.lease = undefined;
    if (lease === undefined) return;
    try {
      await lease.revoke();
      this.log.debug("registration revoked");
    } catch (err) {
      this.log.warn({ err }, "could not revoke registration lease; the key expires with its TTL");
    }
  }

  private put(lease: Lease): Promise<unknown> {
    return lease.put(this.key).value(JSON.stringify(this.value())).exec();
  }

  /** One attempt: a fresh lease, the key under it. Leaves nothing behind on failure. */
  private async register(): Promise<void> {
    const lease = this.client.lease(this.ttl, { autoKeepAlive: true });
    lease.on("lost", (err) => this.onLost(lease, err));
    try {
      do {
        this.dirty = false;
        await this.put(lease);
      } while (this.dirty && !this.closed);
      // "lost" may have fired while the put was in flight, before this lease became current.
      if (lease.revoked()) throw new Error("lease lost while registering");
    } catch (err) {
      await lease.revoke().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      await lease.revoke().catch(() => undefined);
      return;
    }
    this.lease = lease;
  }

  private onLost(lease: Lease, err: unknown): void {
    if (lease !== this.lease || this.closed) return;
    this.lease = undefined;
    this.log.warn({ err }, "registration lease lost, registering again");
    this.retrying = this.retry().finally(() => {
      this.retrying = undefined;
    });
  }

  private async retry(): Promise<void> {
    let ceiling = RETRY_MIN_MS;
    for (let attempt = 1; !this.closed; attempt++) {
      try {
        await this.register();
        if (!this.closed) this.log.info({ attempt }, "registered again");
        return;
      } catch (err) {
        this.log.warn({ err, attempt }, "re-registration failed");
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.random() * ceiling);
        timer.unref();
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
      ceiling = Math.min(ceiling * 2, RETRY_MAX_MS);
    }
  }
}
