import { EventEmitter } from "node:events";
import type { Etcd3, IKeyValue, Watcher } from "etcd3";
import type { Logger } from "./logger.js";

/** Options for {@link Membership}. */
export interface MembershipOptions<T> {
  /** etcd client; the membership does not close it. */
  client: Etcd3;
  /** Key prefix to follow, e.g. `/taskmesh/workers/`; a member's id is its key without it. */
  prefix: string;
  /**
   * Turns a stored value into a member. `undefined` (or a throw) means malformed: the key is
   * ignored with a warning, and a member whose value turns malformed counts as deleted.
   */
  parse: (id: string, value: string) => T | undefined;
  /** Parent logger; the membership logs under a child with `component: "membership"`. */
  logger: Logger;
}

/** Events of a {@link Membership}: a member appeared or changed, or went away. */
export interface MembershipEvents<T> {
  /** `previous` is the member's last value, or undefined when it is new. */
  put: [id: string, value: T, previous: T | undefined];
  delete: [id: string, previous: T];
}

/** Lifecycle of a {@link Membership}. */
export type MembershipState = "idle" | "starting" | "running" | "stopped";

interface Entry<T> {
  value: T;
  modRevision: bigint;
  createRevision: bigint;
}

const RESYNC_MIN_MS = 100;
/** Short enough that a view is fresh again within ~2 s of etcd coming back. */
const RESYNC_MAX_MS = 2_000;
/** How long close() waits for etcd to confirm a watch cancellation. */
const CANCEL_TIMEOUT_MS = 2_000;

/**
 * A live view of the members under an etcd key prefix (workers under `/taskmesh/workers/`,
 * service instances under `/taskmesh/services/<name>/`), as a map and as events.
 *
 * It reads the whole range, then watches from the revision after that read, so no change is
 * missed or seen twice. When the watch breaks (stream error, disconnect, etcd restart) or etcd
 * cancels it because its start revision was compacted, it re-syncs: reads the range again,
 * emits `put` for members that are new or changed and `delete` for those gone (nothing for
 * unchanged ones), and watches from the new revision. A member deleted and re-created while
 * the watch was broken is reported as a `delete` followed by a `put`, as the watch would have.
 *
 * Events are emitted synchronously, in etcd's order, to every listener; a listener that throws
 * is logged and does not stop the others or the membership.
 */
export class Membership<T> extends EventEmitter<MembershipEvents<T>> {
  private readonly client: Etcd3;
  private readonly prefix: string;
  private readonly parse: (id: string, value: string) => T | undefined;
  private readonly log: Logger;

  private readonly members = new Map<string, Entry<T>>();
  /** Keys whose value could not be parsed, with the revision warned about (warn once each). */
  private readonly ignored = new Map<string, bigint>();
  private stateValue: MembershipState = "idle";
  private watcher: Watcher | undefined;
  /** Bumped whenever the current watcher is dropped: events of older watchers are ignored. */
  private generation = 0;
  private resyncTimer: NodeJS.Timeout | undefined;
  private resyncDelay = RESYNC_MIN_MS;
  private resyncCount = 0;

  /** Creates a stopped membership; call {@link start}. */
  constructor(opts: MembershipOptions<T>) {
    super();
    this.client = opts.client;
    this.prefix = opts.prefix;
    this.parse = opts.parse;
    this.log = opts.logger.child({ component: "membership", prefix: opts.prefix });
  }

  /** Current state. */
  get state(): MembershipState {
    return this.stateValue;
  }

  /** How many times the view was re-read after the watch broke (for metrics and tests). */
  get resyncs(): number {
    return this.resyncCount;
  }

  /**
   * Reads the members (emitting `put` for each, so listeners attached before start() see the
   * whole set), then watches for changes in the background. Resolves after the initial read;
   * rejects if that read fails, leaving the membership idle so start() can be called again.
   */
  async start(): Promise<void> {
    if (this.stateValue !== "idle") throw new Error(`membership is ${this.stateValue}`);
    this.stateValue = "starting";
    let revision: bigint;
    try {
      revision = await this.sync();
    } catch (err) {
      if (this.stateValue === "starting") this.stateValue = "idle";
      throw err;
    }
    if (this.stateValue !== "starting") return; // closed meanwhile
    this.stateValue = "running";
    this.watchFrom(revision);
  }

  /** A copy of the current members by id. */
  snapshot(): ReadonlyMap<string, T> {
    const out = new Map<string, T>();
    for (const [id, e] of this.members) out.set(id, e.value);
    return out;
  }

  /** The current value of member `id`. */
  get(id: string): T | undefined {
    return this.members.get(id)?.value;
  }

  /** Number of members. */
  get size(): number {
    return this.members.size;
  }

  /** Stops watching. Emits nothing afterwards. Safe to call twice. */
  async close(): Promise<void> {
    if (this.stateValue === "stopped") return;
    this.stateValue = "stopped";
    if (this.resyncTimer !== undefined) clearTimeout(this.resyncTimer);
    this.resyncTimer = undefined;
    const w = this.dropWatcher();
    if (w !== undefined) await this.cancel(w);
  }

  /** Reads the whole range, reconciles the view with it, returns the read's revision. */
  private async sync(): Promise<bigint> {
    const res = await this.client.getAll().prefix(this.prefix).exec();
    if (this.stateValue === "stopped") return 0n;
    const present = new Set<string>();
    for (const kv of res.kvs) present.add(this.applyPut(kv));
    for (const [id, e] of this.members) {
      if (present.has(id)) continue;
      this.members.delete(id);
      this.emitSafe("delete", id, e.value);
    }
    for (const id of this.ignored.keys()) if (!present.has(id)) this.ignored.delete(id);
    return BigInt(res.header.revision);
  }

  private watchFrom(revision: bigint): void {
    const generation = ++this.generation;
    const current = (): boolean => generation === this.generation && this.stateValue === "running";
    // watcher() (rather than create()) returns the watcher before it connects, so the listeners
    // are in place before the first event: create() resolves a few ticks after "connected", and
    // events that arrive in the same chunk as the creation response would be lost.
    const w = this.client
      .watch()
      .prefix(this.prefix)
      .startRevision(String(revision + 1n))
      .watcher();
    this.watcher = w;
    w.on("connected", () => {
      if (!current()) return;
      this.resyncDelay = RESYNC_MIN_MS;
      this.log.debug({ revision: String(revision) }, "watching");
    });
    w.on("put", (kv) => {
      if (current()) this.applyPut(kv);
    });
    w.on("delete", (kv) => {
      if (current()) this.applyDelete(kv);
    });
    // etcd3 reconnects a broken watch by itself, but from the revision of the last response it
    // saw, which may be later than events it has not delivered; we re-read instead.
    w.on("disconnected", (err) => {
      if (!current()) return;
      this.log.warn({ err }, "watch disconnected, re-syncing");
      const old = this.dropWatcher();
      // Not connected now, so this only takes it off etcd3's list of watchers to re-attach.
      if (old !== undefined) void this.cancel(old);
      this.scheduleResync();
    });
    // Emitted when etcd cancels the watch (start revision compacted, or another reason); etcd3
    // has already forgotten the watcher, so it must not be cancelled again.
    w.on("error", (err) => {
      if (!current()) return;
      this.log.warn({ err }, "watch cancelled by etcd, re-syncing");
      this.dropWatcher();
      this.scheduleResync();
    });
  }

  private dropWatcher(): Watcher | undefined {
    this.generation++;
    const w = this.watcher;
    this.watcher = undefined;
    return w;
  }

  private cancel(w: Watcher): Promise<void> {
    return cancelWatcher(w, this.log);
  }

  private scheduleResync(): void {
    if (this.stateValue !== "running" || this.resyncTimer !== undefined) return;
    const delay = Math.random() * this.resyncDelay;
    this.resyncDelay = Math.min(this.resyncDelay * 2, RESYNC_MAX_MS);
    this.resyncTimer = setTimeout(() => {
      this.resyncTimer = undefined;
      void this.resync();
    }, delay);
    this.resyncTimer.unref();
  }

  private async resync(): Promise<void> {
    if (this.stateValue !== "running") return;
    let revision: bigint;
    try {
      revision = await this.sync();
    } catch (err) {
      this.log.warn({ err }, "re-sync failed, retrying");
      this.scheduleResync();
      return;
    }
    if (this.stateValue !== "running") return;
    this.resyncCount++;
    this.log.info({ revision: String(revision), members: this.members.size }, "re-synced");
    this.watchFrom(revision);
  }

  private idOf(kv: IKeyValue): string {
    return kv.key.toString("utf8").slice(this.prefix.length);
  }

  /** Applies a put (from the watch or a range read); returns the member id. */
  private applyPut(kv: IKeyValue): string {
    const id = this.idOf(kv);
    const modRevision = BigInt(kv.mod_revision);
    const createRevision = BigInt(kv.create_revision);
    let previous = this.members.get(id);
    if (previous !== undefined && previous.modRevision >= modRevision) return id; // seen already
    let value: T | undefined;
    const raw = kv.value.toString("utf8");
    try {
      value = this.parse(id, raw);
    } catch (err) {
      value = undefined;
      this.log.debug({ err, id }, "parse threw");
    }
    if (value === undefined) {
      if (this.ignored.get(id) !== modRevision) {
        this.ignored.set(id, modRevision);
        this.log.warn({ id, value: raw.slice(0, 200) }, "ignoring malformed member");
      }
      if (previous !== undefined) {
        this.members.delete(id);
        this.emitSafe("delete", id, previous.value);
      }
      return id;
    }
    this.ignored.delete(id);
    if (previous !== undefined && previous.createRevision !== createRevision) {
      // Deleted and created again while we were not watching.
      this.members.delete(id);
      this.emitSafe("delete", id, previous.value);
      previous = undefined;
    }
    this.members.set(id, { value, modRevision, createRevision });
    this.emitSafe("put", id, value, previous?.value);
    return id;
  }

  private applyDelete(kv: IKeyValue): void {
    const id = this.idOf(kv);
    this.ignored.delete(id);
    const previous = this.members.get(id);
    if (previous === undefined) return;
    this.members.delete(id);
    this.emitSafe("delete", id, previous.value);
  }

  /** Calls every listener, each guarded: a throwing listener must not break the membership. */
  private emitSafe<K extends keyof MembershipEvents<T>>(event: K, ...args: MembershipEvents<T>[K]): void {
    for (const listener of this.rawListeners(event as "put" | "delete")) {
      try {
        (listener as (...a: MembershipEvents<T>[K]) => unknown).apply(this, args);
      } catch (err) {
        this.log.error({ err, event, id: args[0] }, "membership listener threw");
      }
    }
  }
}

/**
 * Cancels an etcd watcher without hanging: etcd3's cancel waits for the server's answer, which
 * never comes while etcd is unreachable, so it is bounded. Never throws.
 */
export async function cancelWatcher(w: Watcher, log: Logger): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      w.cancel(),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, CANCEL_TIMEOUT_MS);
        timer.unref();
      }),
    ]);
  } catch (err) {
    log.debug({ err }, "watch cancel failed");
  } finally {
    clearTimeout(timer);
  }
}
