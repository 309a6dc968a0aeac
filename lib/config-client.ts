import { EventEmitter } from "node:events";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { fromJson, type DescField, type DescMessage, type JsonObject, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import { ConfigEvent_Type, ConfigService, type ConfigEvent } from "../gen/taskmesh/v1/config_service_pb.js";
import { delay } from "./lifecycle.js";
import type { Logger } from "./logger.js";
import { configClientMetrics, type ConfigClientMetrics } from "./metrics.js";

import type { Etcd3 } from "etcd3";
import { etcdKeys, parseServiceRecord, type ServiceRecord } from "./keys.js";
import { Membership } from "./membership.js";
import { meshTransport, type MeshSecurity } from "./mesh-security.js";

/** Options for {@link ConfigClient}. */
export interface ConfigClientOptions {
  /**
   * The config service instances (`host:port`) to try, read again before every connection
   * attempt; see {@link configServiceAddresses} to build it from a Membership with a fallback.
   */
  addresses: () => readonly string[];
  /**
   * The namespaces to follow, e.g. `["worker", "worker/w-1"]` (see {@link workerNamespaces}).
   * Order matters only for {@link ConfigClient.merged}: later namespaces override earlier ones.
   */
  namespaces: readonly string[];
  /** This instance's labels: a gray release applies when they include all its `gray_labels`. @default {} */
  labels?: Readonly<Record<string, string>>;
  /**
   * Last-known-good configuration on disk (JSON, written atomically after every change); read
   * first at start so the service starts while the config service or etcd is down. Omit: no cache.
   */
  cacheFile?: string;
  /** Where `taskmesh_config_applied_revision{namespace}` and `taskmesh_config_client_connected` go. */
  registry?: Registry;
  /** Parent logger; the client logs under a child with `component: "config-client"`. */
  logger: Logger;
  /** How long start() waits for the first snapshot before going on with the cache. @default 2000 */
  startTimeoutMs?: number;
  /** First reconnection delay ceiling (full jitter, doubling). @default 100 */
  backoffInitialMs?: number;
  /** Largest reconnection delay ceiling. @default 5000 */
  backoffMaxMs?: number;
  /** HTTP/2 PING interval on the watch connection (a hung config service is noticed). @default 5000 */
  pingIntervalMs?: number;
  /** How long a PING may stay unanswered before the connection is dropped. @default 5000 */
  pingTimeoutMs?: number;
  /** Mesh credentials to dial the config service with (mTLS, service token); plaintext without. */
  security?: MeshSecurity;
}

/** Events of a {@link ConfigClient}. */
export interface ConfigClientEvents {
  /**
   * The effective value of a followed namespace changed (undefined: it has none any more), at
   * `revision` (the etcd revision of the change). Emitted synchronously, in revision order, only
   * when the value differs from the one before; a listener that throws is logged and ignored.
   */
  change: [namespace: string, value: JsonObject | undefined, revision: bigint];
  /** A (re)connection delivered everything up to `revision`: the view is live. */
  synced: [revision: bigint];
}

/** Lifecycle of a {@link ConfigClient}. */
export type ConfigClientState = "idle" | "starting" | "running" | "stopped";

/** One stored version as the client keeps it. */
interface Version {
  value: JsonObject;
  revision: bigint;
}

interface GrayVersion extends Version {
  labels: Record<string, string>;
}

/** What the client knows of one namespace. */
interface Slot {
  main?: Version;
  gray?: GrayVersion;
  /** Revision of the last change applied to the effective value (0: none). */
  applied: bigint;
}

/** The cache file's JSON. Revisions are strings (JSON has no int64). */
interface CacheFile {
  version: 1;
  savedAt: string;
  namespaces: Record<
    string,
    {
      main?: { value: JsonObject; revision: string };
      gray?: { value: JsonObject; revision: string; labels: Record<string, string> };
      applied: string;
    }
  >;
}

/** True when an instance with `labels` applies a gray release with `grayLabels` (all must match). */
export function grayApplies(grayLabels: Readonly<Record<string, string>>, labels: Readonly<Record<string, string>>): boolean {
  const wanted = Object.entries(grayLabels);
  return wanted.length > 0 && wanted.every(([k, v]) => labels[k] === v);
}

/** The namespaces a worker follows, in merge order: `["worker", "worker/<id>"]`. */
export function workerNamespaces(workerId: string): string[] {
  return ["worker", `worker/${workerId}`];
}

/**
 * Builds {@link ConfigClientOptions.addresses} from a live view of config service instances (a
 * `Membership<ServiceRecord>` of `<root>services/config/`), falling back to fixed addresses
 * (e.g. from a flag) while none is registered.
 */
export function configServiceAddresses(
  members: { snapshot(): ReadonlyMap<string, { address: string }> } | undefined,
  fallback: readonly string[] = [],
): () => string[] {
  return () => {
    const live = members === undefined ? [] : [...members.snapshot().values()].map((r) => r.address);
    return live.length > 0 ? live : [...fallback];
  };
}

/** JSON with sorted keys: equal documents give equal strings. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

function sameValue(a: JsonObject | undefined, b: JsonObject | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return canonical(a) === canonical(b);
}

/**
 * Shallow-merges documents in order (later keys win): how a worker's effective configuration is
 * `worker` overridden by `worker/<id>`. For the built-in schemas prefer {@link decodeConfig},
 * which also merges `http_allowed_hosts` with `httpAllowedHosts`.
 */
export function mergeConfigs(...docs: (JsonObject | undefined)[]): JsonObject {
  const out: JsonObject = {};
  for (const d of docs) if (d !== undefined) Object.assign(out, d);
  return out;
}

/**
 * Decodes configuration documents into the fields of a protobuf schema (`WorkerConfigSchema`,
 * `SchedulerConfigSchema`, `GatewayConfigSchema`), merged field by field in order (later
 * documents override earlier ones: `decodeConfig(WorkerConfigSchema, client.get("worker"),
 * client.get("worker/w-1"))`). Only the fields the documents set are in the result, so a caller
 * keeps its own default for the others; snake_case and lowerCamelCase names both count; unknown
 * fields and fields that do not decode are skipped (the service validated them when they were
 * stored, so that only happens with a newer schema).
 */
export function decodeConfig<Desc extends DescMessage>(
  schema: Desc,
  ...docs: (JsonObject | undefined)[]
): Partial<MessageShape<Desc>> {
  const byName = new Map<string, DescField>();
  for (const f of schema.fields) {
    byName.set(f.name, f);
    byName.set(f.jsonName, f);
  }
  const out: Record<string, unknown> = {};
  for (const doc of docs) {
    if (doc === undefined) continue;
    for (const [key, raw] of Object.entries(doc)) {
      const field = byName.get(key);
      if (field === undefined || raw === null) continue;
      try {
        const msg = fromJson(schema, { [key]: raw }) as unknown as Record<string, unknown>;
        out[field.localName] = msg[field.localName];
      } catch {
        // Not decodable with this schema: keep the earlier value, if any.
      }
    }
  }
  // The keys are the schema's own local names with values decoded by it.
  return out as Partial<MessageShape<Desc>>;
}

const DEFAULTS = {
  startTimeoutMs: 2_000,
  backoffInitialMs: 100,
  backoffMaxMs: 5_000,
  pingIntervalMs: 5_000,
  pingTimeoutMs: 5_000,
};

/** How one watch session ended. */
type SessionEnd = "stopped" | "out-of-range" | "refused" | "broken";

/** Codes that say the request itself is wrong: retried only at the slowest pace. */
const REFUSED_CODES: ReadonlySet<Code> = new Set([
  Code.InvalidArgument,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.Unimplemented,
  Code.FailedPrecondition,
]);

/**
 * Follows configuration namespaces live, for a service: what every taskmesh service uses to get
 * its configuration from the config service.
 *
 * It keeps, per namespace, the document and the gray release (if any), and exposes the effective
 * value: the gray release's value when this instance's labels include all the gray release's
 * labels, else the document's. `change` fires when an effective value changes.
 *
 * - start() reads the cache file (last-known-good), then connects (WatchConfig over gRPC to one
 *   config service instance) and resolves after the first snapshot, or after `startTimeoutMs`
 *   with the cached values: a service starts while the config service or etcd is down.
 * - After a disconnect it reconnects with backoff, to any instance, and resumes from its last
 *   revision: every change made meanwhile arrives, in order. When that revision was compacted
 *   (OUT_OF_RANGE), it reads everything again and emits a change for each namespace that differs
 *   (deletions included). A fresh start always reads everything (the cache may be stale, or from
 *   another etcd).
 * - The cache file is rewritten atomically (temp file + rename) after every applied change.
 */
export class ConfigClient extends EventEmitter<ConfigClientEvents> {
  private readonly opts: ConfigClientOptions;
  private readonly followed: readonly string[];
  private readonly followedSet: ReadonlySet<string>;
  private readonly labels: Readonly<Record<string, string>>;
  private readonly log: Logger;
  private readonly metrics: ConfigClientMetrics | undefined;
  private readonly stop = new AbortController();
  private readonly slots = new Map<string, Slot>();
  private readonly transports = new Map<string, { manager: Http2SessionManager; transport: Transport }>();

  private stateValue: ConfigClientState = "idle";
  /** Every change up to this revision has been applied; 0: the next session reads everything. */
  private resume = 0n;
  private connectedTo: string | undefined;
  private loop: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private firstSync: (() => void) | undefined;
  private saving: Promise<void> | undefined;
  private dirty = false;
  private tmpCounter = 0;
  private failedSessions = 0;

  /** Creates an idle client; call {@link start}. Throws when `namespaces` is empty. */
  constructor(opts: ConfigClientOptions) {
    super();
    if (opts.namespaces.length === 0) throw new Error("config client: follow at least one namespace");
    this.opts = opts;
    this.followed = [...new Set(opts.namespaces)];
    this.followedSet = new Set(this.followed);
    this.labels = { ...(opts.labels ?? {}) };
    this.log = opts.logger.child({ component: "config-client" });
    this.metrics = opts.registry === undefined ? undefined : configClientMetrics(opts.registry);
  }

  /** Current state. */
  get state(): ConfigClientState {
    return this.stateValue;
  }

  /** How many watch sessions ended in a failure (for tests and diagnostics). */
  get failures(): number {
    return this.failedSessions;
  }

  /** The config service instance followed live right now, or undefined (running on the last-known config). */
  get connected(): string | undefined {
    return this.connectedTo;
  }

  /**
   * Loads the cache, connects, and resolves after the first snapshot or `startTimeoutMs`
   * (whichever first); never rejects for an unreachable config service (it keeps trying in the
   * background). `change` fires for every namespace that gets a value, cached or fetched.
   */
  async start(): Promise<void> {
    if (this.stateValue !== "idle") throw new Error(`config client is ${this.stateValue}`);
    this.stateValue = "starting";
    await this.loadCache();
    if (this.stop.signal.aborted) return;
    const synced = new Promise<void>((resolve) => {
      this.firstSync = resolve;
    });
    this.loop = this.run();
    const timedOut = await Promise.race([
      synced.then(() => false),
      delay(this.opts.startTimeoutMs ?? DEFAULTS.startTimeoutMs, this.stop.signal).then(
        () => true,
        () => false,
      ),
    ]);
    if (this.stateValue === "starting") this.stateValue = "running";
    if (timedOut) {
      this.log.warn(
        { namespaces: this.followed, cached: this.slots.size },
        "no config service answered in time; starting with the last-known configuration",
      );
    }
  }

  /** The effective value of a followed namespace (gray release or document), or undefined. */
  get(namespace: string): JsonObject | undefined {
    const slot = this.slots.get(namespace);
    return slot === undefined ? undefined : this.effective(slot)?.value;
  }

  /** The revision of the last change applied to a namespace's effective value, or undefined. */
  revision(namespace: string): bigint | undefined {
    const r = this.slots.get(namespace)?.applied;
    return r === undefined || r === 0n ? undefined : r;
  }

  /**
   * The followed namespaces' effective values shallow-merged in the order given (default: the
   * order of {@link ConfigClientOptions.namespaces}); `{}` when none has a value.
   */
  merged(namespaces: readonly string[] = this.followed): JsonObject {
    return mergeConfigs(...namespaces.map((ns) => this.get(ns)));
  }

  /** Stops following, waits for the cache file to be written. Emits nothing afterwards. Safe to call twice. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.stateValue = "stopped";
    this.stop.abort(new ConnectError("config client closed", Code.Canceled));
    await this.loop;
    await this.saving;
    for (const { manager } of this.transports.values()) manager.abort();
    this.transports.clear();
    this.setConnected(undefined);
  }

  private effective(slot: Slot): Version | undefined {
    if (slot.gray !== undefined && grayApplies(slot.gray.labels, this.labels)) return slot.gray;
    return slot.main;
  }

  /**
   * Replaces a namespace's slot and emits `change` when its effective value differs. `revision`
   * is the change's revision.
   */
  private commitSlot(ns: string, next: Slot, revision: bigint): void {
    const prev = this.slots.get(ns);
    const before = prev === undefined ? undefined : this.effective(prev);
    const after = this.effective(next);
    next.applied = prev?.applied ?? 0n;
    const changed = !sameValue(before?.value, after?.value);
    if (changed || (after !== undefined && after.revision !== before?.revision)) next.applied = revision;
    if (next.main === undefined && next.gray === undefined && next.applied === 0n) this.slots.delete(ns);
    else this.slots.set(ns, next);
    this.metrics?.appliedRevision.set({ namespace: ns }, Number(next.applied));
    this.scheduleSave();
    if (changed) this.emitChange(ns, after?.value, revision);
  }

  private emitChange(ns: string, value: JsonObject | undefined, revision: bigint): void {
    for (const listener of this.rawListeners("change")) {
      try {
        (listener as (...a: ConfigClientEvents["change"]) => unknown).call(this, ns, value, revision);
      } catch (err) {
        this.log.error({ err, namespace: ns }, "config change listener threw");
      }
    }
  }

  /** Applies one PUT or DELETE from a live watch; events already applied (a replay) are skipped. */
  private applyEvent(ev: ConfigEvent): void {
    const e = ev.entry;
    if (e === undefined || !this.followedSet.has(e.namespace)) return;
    const gray = Object.keys(e.grayLabels).length > 0;
    const prev = this.slots.get(e.namespace);
    const next: Slot = { ...prev, applied: prev?.applied ?? 0n };
    const current = gray ? next.gray : next.main;
    switch (ev.type) {
      case ConfigEvent_Type.PUT: {
        if (e.value === undefined || (current !== undefined && current.revision >= e.revision)) return;
        if (gray) next.gray = { value: e.value, revision: e.revision, labels: { ...e.grayLabels } };
        else next.main = { value: e.value, revision: e.revision };
        break;
      }
      case ConfigEvent_Type.DELETE: {
        if (current === undefined || current.revision >= e.revision) return;
        if (gray) delete next.gray;
        else delete next.main;
        break;
      }
      case ConfigEvent_Type.UNSPECIFIED:
        return;
    }
    this.commitSlot(e.namespace, next, e.revision);
  }

  /** Replaces the whole view with a snapshot read at `revision`, emitting what differs. */
  private applySnapshot(snapshot: ReadonlyMap<string, Slot>, revision: bigint): void {
    for (const ns of this.followed) {
      const next: Slot = { ...(snapshot.get(ns) ?? {}), applied: 0n };
      const eff = this.effective(next);
      this.commitSlot(ns, next, eff?.revision ?? revision);
    }
  }

  private async run(): Promise<void> {
    const initial = this.opts.backoffInitialMs ?? DEFAULTS.backoffInitialMs;
    const max = this.opts.backoffMaxMs ?? DEFAULTS.backoffMaxMs;
    let ceiling = initial;
    let cursor = Math.floor(Math.random() * 1024);
    let warnedEmpty = false;
    while (!this.stop.signal.aborted) {
      let addresses: readonly string[] = [];
      try {
        addresses = this.opts.addresses();
      } catch (err) {
        this.log.warn({ err }, "could not list config service instances");
      }
      const address = addresses.length === 0 ? undefined : addresses[cursor++ % addresses.length];
      if (address === undefined) {
        if (!warnedEmpty) this.log.warn("no config service instance known; retrying");
        warnedEmpty = true;
      } else {
        warnedEmpty = false;
        const { end, synced } = await this.session(address);
        if (end === "stopped") return;
        if (synced || end === "out-of-range") ceiling = initial;
        if (end === "refused") ceiling = max;
      }
      await delay(Math.random() * ceiling, this.stop.signal).catch(() => undefined);
      ceiling = Math.min(ceiling * 2, max);
    }
  }

  /** One WatchConfig stream to one instance, until it breaks. */
  private async session(address: string): Promise<{ end: SessionEnd; synced: boolean }> {
    const client = createClient(ConfigService, this.transport(address));
    const from = this.resume;
    // From 0 the stream starts with every document: gather them, then reconcile at the sync event.
    let snapshot: Map<string, Slot> | undefined = from === 0n ? new Map() : undefined;
    let synced = false;
    try {
      const stream = client.watchConfig(
        { namespaces: [...this.followed], fromRevision: from },
        { signal: this.stop.signal },
      );
      for await (const ev of stream) {
        if (this.stop.signal.aborted) break;
        const revision = ev.entry?.revision ?? 0n;
        if (ev.type === ConfigEvent_Type.UNSPECIFIED) {
          if (snapshot !== undefined) {
            this.applySnapshot(snapshot, revision);
            snapshot = undefined;
          }
          if (revision > this.resume) this.resume = revision;
          if (!synced) {
            synced = true;
            this.setConnected(address);
            this.log.info({ address, revision: String(this.resume), from: String(from) }, "following config");
            this.emitSynced(this.resume);
            this.firstSync?.();
            this.firstSync = undefined;
          }
          continue;
        }
        if (snapshot !== undefined) {
          collect(snapshot, ev);
          continue;
        }
        this.applyEvent(ev);
        // Other events of this same revision (one transaction) may still be on their way: a
        // resumed watch replays the whole revision, which is harmless (replays are skipped).
        if (revision - 1n > this.resume) this.resume = revision - 1n;
      }
      if (this.stop.signal.aborted) return { end: "stopped", synced };
      throw new ConnectError("config watch ended", Code.Unavailable);
    } catch (err) {
      if (this.stop.signal.aborted) return { end: "stopped", synced };
      this.setConnected(undefined);
      this.dropTransport(address);
      this.failedSessions++;
      const ce = ConnectError.from(err);
      if (ce.code === Code.OutOfRange) {
        this.log.warn({ address, revision: String(this.resume) }, "config revision compacted; reading everything again");
        this.resume = 0n;
        return { end: "out-of-range", synced };
      }
      if (REFUSED_CODES.has(ce.code)) {
        // Retrying the same request will not help (a namespace the service refuses?): say so loudly.
        this.log.error({ address, code: Code[ce.code], err: ce.rawMessage }, "config watch refused; retrying slowly");
        return { end: "refused", synced };
      }
      this.log.warn({ address, code: Code[ce.code], err: ce.rawMessage }, "config watch broken; reconnecting");
      return { end: "broken", synced };
    }
  }

  private emitSynced(revision: bigint): void {
    try {
      this.emit("synced", revision);
    } catch (err) {
      this.log.error({ err }, "config synced listener threw");
    }
  }

  private setConnected(address: string | undefined): void {
    this.connectedTo = address;
    this.metrics?.connected.set(address === undefined ? 0 : 1);
  }

  private transport(address: string): Transport {
    let t = this.transports.get(address);
    if (t === undefined) {
      t = meshTransport(this.opts.security, address, ["config"], {
        pingIntervalMs: this.opts.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
        pingTimeoutMs: this.opts.pingTimeoutMs ?? DEFAULTS.pingTimeoutMs,
      });
      this.transports.set(address, t);
    }
    return t.transport;
  }

  /**
   * Forgets the connection to an instance after a failure; the next session opens a new one.
   * It is NOT aborted: a connection that failed (a PING timeout destroys it) emits its 'error'
   * event a tick later, and aborting the manager first would remove the manager's own error
   * listener, turning that event into an uncaught exception that kills the process.
   */
  private dropTransport(address: string): void {
    this.transports.delete(address);
  }

  private async loadCache(): Promise<void> {
    const file = this.opts.cacheFile;
    if (file === undefined) return;
    let parsed: CacheFile;
    try {
      parsed = JSON.parse(await readFile(file, "utf8")) as CacheFile;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") this.log.warn({ err, file }, "config cache unreadable; ignoring it");
      return;
    }
    let loaded = 0;
    try {
      for (const ns of this.followed) {
        const c = parsed.namespaces?.[ns];
        if (c === undefined) continue;
        const next: Slot = { applied: 0n };
        if (c.main !== undefined) next.main = { value: c.main.value, revision: BigInt(c.main.revision) };
        if (c.gray !== undefined) {
          next.gray = { value: c.gray.value, revision: BigInt(c.gray.revision), labels: { ...c.gray.labels } };
        }
        this.commitSlot(ns, next, BigInt(c.applied));
        loaded++;
      }
    } catch (err) {
      this.log.warn({ err, file }, "config cache malformed; ignoring the rest of it");
    }
    this.log.info({ file, namespaces: loaded, savedAt: parsed.savedAt }, "config cache loaded");
  }

  /** Writes the cache soon; writes never overlap, and the last state is always written. */
  private scheduleSave(): void {
    if (this.opts.cacheFile === undefined) return;
    this.dirty = true;
    this.saving ??= (async () => {
      while (this.dirty) {
        this.dirty = false;
        await this.writeCache();
      }
    })().finally(() => {
      this.saving = undefined;
    });
  }

  private async writeCache(): Promise<void> {
    const file = this.opts.cacheFile;
    if (file === undefined) return;
    const data: CacheFile = { version: 1, savedAt: new Date().toISOString(), namespaces: {} };
    for (const [ns, slot] of this.slots) {
      data.namespaces[ns] = {
        ...(slot.main !== undefined ? { main: { value: slot.main.value, revision: String(slot.main.revision) } } : {}),
        ...(slot.gray !== undefined
          ? { gray: { value: slot.gray.value, revision: String(slot.gray.revision), labels: slot.gray.labels } }
          : {}),
        applied: String(slot.applied),
      };
    }
    const tmp = `${file}.${process.pid}.${++this.tmpCounter}.tmp`;
    try {
      await mkdir(dirname(file), { recursive: true });
      await writeFile(tmp, `${JSON.stringify(data, null, 2)}\n`);
      await rename(tmp, file);
    } catch (err) {
      this.log.warn({ err, file }, "could not write the config cache");
      await rm(tmp, { force: true }).catch(() => undefined);
    }
  }
}

/** Adds one event of an initial snapshot (PUTs only) to the view being built. */
function collect(snapshot: Map<string, Slot>, ev: ConfigEvent): void {
  const e = ev.entry;
  if (ev.type !== ConfigEvent_Type.PUT || e === undefined || e.value === undefined) return;
  const slot = snapshot.get(e.namespace) ?? { applied: 0n };
  if (Object.keys(e.grayLabels).length > 0) {
    slot.gray = { value: e.value, revision: e.revision, labels: { ...e.grayLabels } };
  } else {
    slot.main = { value: e.value, revision: e.revision };
  }
  snapshot.set(e.namespace, slot);
}

/** Options for {@link connectConfig}. */
export interface ConnectConfigOptions {
  etcd: Etcd3;
  /** etcd key root, e.g. "/taskmesh/": config service instances are found under `<root>services/config/`. */
  root: string;
  namespaces: readonly string[];
  labels: Readonly<Record<string, string>>;
  /** Last-known-good cache file; "" for none. */
  cacheFile: string;
  registry: Registry;
  logger: Logger;
  /** Mesh credentials (mTLS, service token); plaintext without. */
  security?: MeshSecurity;
}

/** A service's live configuration: the client plus the discovery it uses. */
export interface ServiceConfig {
  readonly client: ConfigClient;
  close(): Promise<void>;
}

/**
 * Follows a service's configuration namespaces through the config service instances registered
 * in etcd: what every service's assembly calls. Resolves once the first snapshot (or the disk
 * cache, if the config service cannot be reached in time) is applied.
 */
export async function connectConfig(opts: ConnectConfigOptions): Promise<ServiceConfig> {
  const members = new Membership<ServiceRecord>({
    client: opts.etcd,
    prefix: etcdKeys(opts.root).services("config"),
    parse: parseServiceRecord,
    logger: opts.logger,
  });
  await members.start().catch((err: unknown) => opts.logger.warn({ err }, "config service discovery unavailable"));
  // With no config service registered there is nothing to wait for: start on the cache and
  // defaults, and pick the configuration up as soon as an instance appears.
  const registered = members.snapshot().size > 0;
  const client = new ConfigClient({
    addresses: configServiceAddresses(members),
    ...(registered ? {} : { startTimeoutMs: 0 }),
    namespaces: opts.namespaces,
    labels: opts.labels,
    ...(opts.cacheFile !== "" ? { cacheFile: opts.cacheFile } : {}),
    registry: opts.registry,
    logger: opts.logger,
    ...(opts.security !== undefined ? { security: opts.security } : {}),
  });
  await client.start();
  return {
    client,
    async close() {
      await client.close();
      await members.close();
    },
  };
}
