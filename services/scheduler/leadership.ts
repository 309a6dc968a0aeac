import { EventEmitter } from "node:events";
import type { Etcd3, Lease } from "etcd3";
import type { Logger } from "pino";
import { delay } from "../../lib/lifecycle.js";
import { cancelWatcher } from "../../lib/membership.js";

/** Options for {@link Leadership}. */
export interface LeadershipOptions {
  client: Etcd3;
  /** etcd key root, e.g. "/taskmesh/"; candidates' keys live under `<root>election/scheduler/`. */
  root: string;
  /** Lease TTL of a candidacy in seconds. @default 3 */
  ttlSeconds?: number;
  /**
   * A leader steps down on its own when etcd has not confirmed its lease for `ttl − margin`
   * (measured from when the last confirmed keepalive was SENT, so before etcd could have let the
   * lease expire and elected another). @default max(300, ttl × 100) ms
   */
  marginMs?: number;
  logger: Logger;
}

/** How often a leader checks that its lease is still confirmed. */
const WATCHDOG_MS = 50;
/** Longest a release (lease revoke) may take before it is left to expire. */
const RELEASE_MS = 1000;

/** One candidacy: a lease, a key under it, and the reason it ended (once it does). */
class Candidacy {
  readonly lease: Lease;
  /** Send time of the newest keepalive (or the grant) etcd answered: the lease lives at least ttl after it. */
  confirmedAt = Date.now();
  private keepalives: NodeJS.Timeout | undefined;
  private endReason: string | undefined;
  private onEnd: (() => void)[] = [];
  /** Resolves with the reason once the candidacy ends. */
  readonly ended: Promise<string>;

  constructor(
    client: Etcd3,
    private readonly ttlMs: number,
  ) {
    this.lease = client.lease(ttlMs / 1000, { autoKeepAlive: false });
    this.ended = new Promise((resolve) => this.onEnd.push(() => resolve(this.endReason as string)));
    this.lease.on("lost", (err) => this.end(`lease lost: ${err.message}`));
  }

  /**
   * Keeps the granted lease alive: a keepalive every ttl/3, each on a stream of its own (etcd3's
   * keepaliveOnce) with the TTL as its deadline, so that an answer confirms exactly the keepalive
   * it answers, and the lease lives at least ttl after that one was sent. (etcd3's own loop sends
   * every keepalive on one stream, so answers could only be matched to send times by their order,
   * and its events do not say which stream fired or answered: once keepalives were fired that no
   * answer would ever match — after its stream errors, which it handles on more than one path — the
   * answers confirmed ever older send times, and a paused leader whose lease etcd kept renewing
   * stayed paused for good.) An answer with TTL 0 (etcd no
   * longer has the lease) ends the candidacy through etcd3's "lost"; while etcd does not answer
   * at all, the candidacy stays, unconfirmed: the leadership is paused, and the first answer says
   * whether the lease lived on.
   */
  keepAlive(log: Logger): void {
    const tick = (): void => {
      if (this.isEnded) return;
      const sent = Date.now();
      this.lease.keepaliveOnce({ deadline: sent + this.ttlMs }).then(
        () => {
          if (sent > this.confirmedAt) this.confirmedAt = sent;
        },
        (err: unknown) => log.debug({ err }, "lease keepalive not answered"),
      );
    };
    this.keepalives = setInterval(tick, this.ttlMs / 3);
    this.keepalives.unref();
    tick();
  }

  get isEnded(): boolean {
    return this.endReason !== undefined;
  }

  end(reason: string): void {
    if (this.endReason !== undefined) return;
    this.endReason = reason;
    clearInterval(this.keepalives);
    for (const f of this.onEnd.splice(0)) f();
  }

  /** Revokes the lease (removing the key, so the next candidate is elected at once), bounded. */
  async release(log: Logger): Promise<void> {
    this.end("released");
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.lease.revoke(),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, RELEASE_MS);
          timer.unref();
        }),
      ]);
    } catch (err) {
      log.debug({ err }, "lease revoke failed; it expires with its TTL");
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * Campaigns for scheduler leadership in etcd (the etcd election recipe: each candidate puts a key
 * under its own lease; the one with the oldest key leads; the others wait for the key just before
 * theirs to go). Emits "elected"(epoch) when this replica leads and "lost" when it stops, then
 * campaigns again. The epoch is the create revision of the leader's key: it only grows, so
 * workers obey the newest leader and Redis refuses the writes of an older one.
 *
 * A leader stops leading by itself — before etcd could elect another — when etcd has not
 * confirmed its lease for `ttl − margin` (a partition, a frozen etcd member, a cut connection), so
 * that two leaders never act at once while the clocks run at the same rate. Waiting candidates
 * re-check their predecessor at least once per TTL, so a watch stuck on an unreachable member
 * never holds an election up.
 */
export class Leadership extends EventEmitter<{ elected: [bigint]; lost: [] }> {
  private closed = false;
  private readonly stopping = new AbortController();
  private leading = false;
  private currentEpoch = 0n;
  private value = "";
  private current: Candidacy | undefined;
  private loop: Promise<void> | undefined;
  private readonly ttlMs: number;
  private readonly marginMs: number;
  private readonly prefix: string;
  private readonly log: Logger;

  constructor(private readonly opts: LeadershipOptions) {
    super();
    this.ttlMs = (opts.ttlSeconds ?? 3) * 1000;
    this.marginMs = opts.marginMs ?? Math.max(300, this.ttlMs / 10);
    const root = opts.root.endsWith("/") ? opts.root : `${opts.root}/`;
    this.prefix = `${root}election/scheduler/`;
    this.log = opts.logger.child({ component: "leadership" });
  }

  /** True while this replica leads and etcd has confirmed its lease recently enough. */
  get isLeader(): boolean {
    return this.leading && Date.now() < this.validUntil;
  }

  /**
   * Until when (ms, this process's clock) the current leadership is known to hold: the send time
   * of the newest keepalive etcd answered, plus the TTL, less the margin. 0 when not leading.
   */
  get validUntil(): number {
    const c = this.current;
    return this.leading && c !== undefined ? c.confirmedAt + this.ttlMs - this.marginMs : 0;
  }

  /** The epoch of the current leadership (0 when not leading). */
  get epoch(): bigint {
    return this.leading ? this.currentEpoch : 0n;
  }

  /** Starts campaigning with `value` (this replica's address) as what it announces; does not wait. */
  start(value: string): void {
    this.value = value;
    this.loop ??= this.run();
  }

  /** The current leader's announced value (address), or undefined. */
  async leader(): Promise<string | undefined> {
    const r = await this.opts.client.getAll().prefix(this.prefix).sort("Create", "Ascend").limit(1).exec();
    return r.kvs[0]?.value.toString("utf8");
  }

  /**
   * Stops leading at once (e.g. Redis refused a write as coming from an older epoch: another
   * replica leads), gives the candidacy up and campaigns again.
   */
  abdicate(reason: string): void {
    this.current?.end(reason);
  }

  private async run(): Promise<void> {
    let backoff = 200;
    while (!this.closed) {
      const c = new Candidacy(this.opts.client, this.ttlMs);
      this.current = c;
      try {
        const epoch = await this.campaign(c);
        if (epoch !== undefined && !this.closed && !c.isEnded) {
          this.currentEpoch = epoch;
          backoff = 200;
          await this.lead(c, epoch);
        }
      } catch (err) {
        if (!this.closed) this.log.warn({ err }, "campaign failed, retrying");
      }
      await c.release(this.log);
      if (this.closed) return;
      await delay(backoff * (0.5 + Math.random()), this.stopping.signal).catch(() => undefined);
      backoff = Math.min(backoff * 2, this.ttlMs);
    }
  }

  /**
   * Leads while the candidacy lasts. When etcd stops confirming the lease in time, leadership
   * pauses ("lost") rather than ends: if a keepalive is confirmed again while the lease lives (etcd
   * was busy electing its own leader, say: it renews every lease afterwards), this replica is
   * still the oldest candidate and leads again with the same epoch; if the lease ran out, etcd3
   * reports it lost and the candidacy ends.
   */
  private async lead(c: Candidacy, epoch: bigint): Promise<void> {
    const validUntil = (): number => c.confirmedAt + this.ttlMs - this.marginMs;
    const ended = c.ended.then(() => "ended" as const);
    this.log.info({ epoch: String(epoch) }, "elected leader");
    for (;;) {
      this.leading = true;
      this.emit("elected", epoch);
      const why = await Promise.race([ended, this.poll(c, () => Date.now() >= validUntil()).then(() => "unconfirmed" as const)]);
      this.leading = false;
      if (why === "ended") {
        if (!this.closed) {
          this.log.warn({ reason: await c.ended, epoch: String(epoch) }, "stepped down");
          this.emit("lost");
        }
        return;
      }
      this.log.warn(
        {
          epoch: String(epoch),
          unconfirmedMs: Date.now() - c.confirmedAt,
          reason: "etcd has not confirmed the leader's lease in time; leads again if it does before the lease expires",
        },
        "stepped down",
      );
      this.emit("lost");
      const next = await Promise.race([ended, this.poll(c, () => Date.now() < validUntil()).then(() => "confirmed" as const)]);
      if (next === "ended") {
        if (!this.closed) this.log.warn({ reason: await c.ended, epoch: String(epoch) }, "leadership ended");
        return;
      }
      this.log.info({ epoch: String(epoch) }, "etcd confirmed the leader's lease again; leading again");
    }
  }

  /**
   * Resolves once `done()` holds (checked every {@link WATCHDOG_MS}); stops checking, without
   * resolving, once the candidacy ended or the campaign closed (the caller races `c.ended`).
   */
  private poll(c: Candidacy, done: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      const t = setInterval(() => {
        if (this.closed || c.isEnded) clearInterval(t);
        else if (done()) {
          clearInterval(t);
          resolve();
        }
      }, WATCHDOG_MS);
      t.unref();
    });
  }

  /** Puts this candidate's key and waits until it is the oldest; undefined if the candidacy ended first. */
  private async campaign(c: Candidacy): Promise<bigint | undefined> {
    const client = this.opts.client;
    const granting = Date.now();
    const leaseId = await Promise.race([c.lease.grant(), c.ended.then(() => undefined)]);
    if (leaseId === undefined) return undefined;
    c.confirmedAt = granting;
    c.keepAlive(this.log);
    const key = `${this.prefix}${leaseId}`;
    const txn = await client
      .if(key, "Create", "==", 0)
      .then(client.put(key).value(this.value).lease(leaseId))
      .else(client.get(key))
      .commit();
    const own = txn.succeeded ? txn.header.revision : txn.responses[0]?.response_range?.kvs[0]?.create_revision;
    if (own === undefined) throw new Error("campaign key vanished");
    const rev = BigInt(own);
    while (!c.isEnded && !this.closed) {
      const before = await client
        .getAll()
        .prefix(this.prefix)
        .maxCreateRevision(String(rev - 1n))
        .sort("Create", "Descend")
        .limit(1)
        .exec();
      const predecessor = before.kvs[0];
      if (predecessor === undefined) return c.isEnded ? undefined : rev;
      // Wait for the key just before ours to go; re-check at least once per TTL anyway.
      await this.deletedOrTimeout(predecessor.key.toString("utf8"), BigInt(before.header.revision), c);
    }
    return undefined;
  }

  private async deletedOrTimeout(key: string, revision: bigint, c: Candidacy): Promise<void> {
    const watcher = this.opts.client.watch().key(key).startRevision(String(revision + 1n)).watcher();
    try {
      await Promise.race([
        new Promise<void>((resolve) => {
          watcher.on("delete", () => resolve());
          watcher.on("error", () => resolve());
        }),
        delay(this.ttlMs),
        c.ended,
      ]);
    } finally {
      await cancelWatcher(watcher, this.log);
    }
  }

  /** Resigns (so another replica takes over at once) and stops campaigning. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const wasLeader = this.leading;
    this.leading = false;
    this.current?.end("closing");
    this.stopping.abort();
    await this.loop;
    if (wasLeader) this.emit("lost");
  }
}
