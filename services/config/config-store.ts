import { create, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Etcd3, ICompare, IEvent, IKeyValue, IRequestOp } from "etcd3";
import {
  ConfigEntrySchema,
  ConfigEvent_Type,
  ConfigEventSchema,
  type ConfigEntry,
  type ConfigEvent,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { invalidArgument, notFound } from "../../lib/errors.js";
import { checkConfig, checkNamespace, grayLabelViolations, violationsError } from "./config-validation.js";

/** How many versions of a namespace its history keeps (puts, gray puts, deletes, abandons). */
export const HISTORY_LIMIT = 50;
/** Digits of a history key's suffix (an int64 revision has at most 19). */
const HISTORY_DIGITS = 20;
/** Optimistic write attempts before giving up with ABORTED. */
const MAX_WRITE_ATTEMPTS = 20;
/** Labels reported for a gray release whose stored value could not be read (never expected). */
const UNKNOWN_GRAY_LABELS: Readonly<Record<string, string>> = { unknown: "" };

/**
 * The etcd key layout of the configuration centre, under a root (`/taskmesh/`):
 *
 * - `<root>config/<ns>`: the namespace's document, JSON `{ value, author, updatedAt }`;
 * - `<root>config-gray/<ns>`: its gray release, JSON `{ value, author, updatedAt, labels }`;
 * - `<root>config-history/<ns>/<20-digit number>`: one past version, JSON `{ action, value?,
 *   author, updatedAt, grayLabels?, rollbackOf? }`, written in the same transaction as the change
 *   it records. The number is the etcd revision the write was based on plus one: equal to the
 *   version's revision unless other etcd keys changed between the read and the commit, always
 *   increasing within a namespace. A version's revision is its history key's mod_revision.
 */
export interface ConfigKeys {
  readonly main: string;
  readonly gray: string;
  readonly history: string;
  /** The byte range that holds all three (for one watch): `[<root>config-, <root>config0)`. */
  readonly watchRange: { start: string; end: string };
}

/** Builds the layout of {@link ConfigKeys} for an etcd root (ending in "/" or not). */
export function configKeys(root: string): ConfigKeys {
  const r = root.endsWith("/") ? root : `${root}/`;
  return {
    main: `${r}config/`,
    gray: `${r}config-gray/`,
    history: `${r}config-history/`,
    watchRange: { start: `${r}config-`, end: `${r}config0` },
  };
}

/** The JSON kept in etcd for a document or a gray release. */
interface StoredDocument {
  value: JsonObject;
  author: string;
  updatedAt: number;
  /** Gray releases only. */
  labels?: Record<string, string>;
}

/** What a history entry records. */
type HistoryAction = "put" | "rollback" | "promote" | "delete" | "gray" | "abandon";

/** The JSON kept in etcd for one history entry. Deletions and abandons have no value. */
interface StoredHistory {
  action: HistoryAction;
  value?: JsonObject;
  author: string;
  updatedAt: number;
  /** Gray puts and abandons: the gray release's labels. */
  grayLabels?: Record<string, string>;
  /** Rollbacks: the revision restored. */
  rollbackOf?: string;
}

interface StoredKv<T> {
  modRevision: bigint;
  /** Undefined when the stored JSON cannot be read (written by hand?): treated as absent on reads. */
  doc: T | undefined;
}

/** One atomic read of a namespace's keys. */
interface NamespaceState {
  /** etcd revision of the read. */
  revision: bigint;
  main: StoredKv<StoredDocument> | undefined;
  gray: StoredKv<StoredDocument> | undefined;
  /** History keys of this namespace (exactly), oldest first. */
  history: string[];
}

/** A change to commit: its operations besides the history entry, and that entry. */
interface WritePlan {
  ops: IRequestOp[];
  history: StoredHistory;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function stringMap(v: unknown): Record<string, string> | undefined {
  if (!isObject(v)) return undefined;
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v)) if (typeof x === "string") out[k] = x;
  return out;
}

function parseDocument(raw: Buffer): StoredDocument | undefined {
  let v: unknown;
  try {
    v = JSON.parse(raw.toString("utf8"));
  } catch {
    return undefined;
  }
  if (!isObject(v) || !isObject(v.value)) return undefined;
  const doc: StoredDocument = {
    value: v.value as JsonObject,
    author: typeof v.author === "string" ? v.author : "",
    updatedAt: typeof v.updatedAt === "number" ? v.updatedAt : 0,
  };
  const labels = stringMap(v.labels);
  if (labels !== undefined) doc.labels = labels;
  return doc;
}

function parseHistory(raw: Buffer): StoredHistory | undefined {
  let v: unknown;
  try {
    v = JSON.parse(raw.toString("utf8"));
  } catch {
    return undefined;
  }
  if (!isObject(v) || typeof v.action !== "string") return undefined;
  const h: StoredHistory = {
    action: v.action as HistoryAction,
    author: typeof v.author === "string" ? v.author : "",
    updatedAt: typeof v.updatedAt === "number" ? v.updatedAt : 0,
  };
  if (isObject(v.value)) h.value = v.value as JsonObject;
  const labels = stringMap(v.grayLabels);
  if (labels !== undefined) h.grayLabels = labels;
  if (typeof v.rollbackOf === "string") h.rollbackOf = v.rollbackOf;
  return h;
}

function entry(
  namespace: string,
  revision: bigint,
  author: string,
  updatedAt: number,
  value: JsonObject | undefined,
  grayLabels: Record<string, string> | undefined,
): ConfigEntry {
  return create(ConfigEntrySchema, {
    namespace,
    revision,
    author,
    updatedAt: timestampFromMs(updatedAt),
    ...(value !== undefined ? { value } : {}),
    ...(grayLabels !== undefined ? { grayLabels } : {}),
  });
}

const utf8 = (s: string): Buffer => Buffer.from(s, "utf8");
const putOp = (key: string, value: string): IRequestOp => ({ request_put: { key: utf8(key), value: utf8(value) } });
const deleteOp = (key: string): IRequestOp => ({ request_delete_range: { key: utf8(key) } });
const modEquals = (key: string, rev: bigint): ICompare => ({
  key: utf8(key),
  target: "Mod",
  result: "Equal",
  mod_revision: rev.toString(),
});

/** Options of a write. */
export interface WriteOptions {
  /** Who makes the change (API key id, service name). */
  author: string;
  /**
   * Compare-and-set: the change happens only if the current revision (of the main document, or of
   * the gray release for a gray put) equals it; 0 means "must not exist yet".
   */
  expectedRevision?: bigint | undefined;
}

/**
 * Namespaced, validated, versioned documents in etcd (layout in {@link ConfigKeys}), with
 * compare-and-set, a 50-version history per namespace, rollback and gray releases.
 *
 * Every change is one etcd transaction that also writes its history entry and trims the history
 * beyond {@link HISTORY_LIMIT}. Writes are optimistic: read the namespace's keys, build the
 * change, commit it if neither the document nor the gray release moved meanwhile, else read again.
 */
export class ConfigStore {
  /** The key layout. */
  readonly keys: ConfigKeys;

  /**
   * @param etcd the etcd client (not closed by the store)
   * @param root the etcd root, e.g. "/taskmesh/"
   * @param validate checks a document before any write; throws INVALID_ARGUMENT. @default checkConfig
   */
  constructor(
    private readonly etcd: Etcd3,
    root: string,
    private readonly validate: (ns: string, value: JsonObject) => void = (ns, value) => checkConfig(ns, value),
  ) {
    this.keys = configKeys(root);
  }

  /**
   * The namespace's document; when it has none but has a gray release, the gray release (with
   * `gray_labels`); otherwise NOT_FOUND.
   */
  async get(ns: string): Promise<ConfigEntry> {
    checkNamespace(ns);
    const s = await this.read(ns, false);
    const e = this.mainEntry(ns, s.main) ?? this.grayEntry(ns, s.gray);
    if (e === undefined) throw notFound("config", ns);
    return e;
  }

  /** Stores a document as the namespace's new version (see {@link WriteOptions} for CAS). */
  async put(ns: string, value: JsonObject, opts: WriteOptions): Promise<ConfigEntry> {
    checkNamespace(ns);
    this.validate(ns, value);
    return this.putMain(ns, value, opts, "put");
  }

  /**
   * Stores a document as the namespace's gray release for instances carrying all `labels`,
   * replacing any previous gray release; the main document is unchanged. CAS compares the gray
   * release's revision.
   */
  async putGray(ns: string, value: JsonObject, labels: Record<string, string>, opts: WriteOptions): Promise<ConfigEntry> {
    checkNamespace(ns);
    const violations = grayLabelViolations(labels);
    if (violations.length > 0) throw violationsError(violations);
    this.validate(ns, value);
    const updatedAt = Date.now();
    const doc: StoredDocument = { value, author: opts.author, updatedAt, labels };
    const revision = await this.commit(ns, (s) => {
      checkExpected(ns, "gray release of config", s.gray, opts.expectedRevision);
      return {
        ops: [putOp(this.keys.gray + ns, JSON.stringify(doc))],
        history: { action: "gray", value, author: opts.author, updatedAt, grayLabels: labels },
      };
    });
    return entry(ns, revision, opts.author, updatedAt, value, labels);
  }

  /**
   * Deletes the namespace's document, and its gray release if any; records a tombstone (an entry
   * without value) in the history. NOT_FOUND when there is no document.
   */
  async delete(ns: string, opts: WriteOptions): Promise<bigint> {
    checkNamespace(ns);
    return this.commit(ns, (s) => {
      if (s.main === undefined) throw notFound("config", ns);
      checkExpected(ns, "config", s.main, opts.expectedRevision);
      const ops = [deleteOp(this.keys.main + ns)];
      // After the document, so a watcher never sees the gray release outlive it needlessly.
      if (s.gray !== undefined) ops.push(deleteOp(this.keys.gray + ns));
      return { ops, history: { action: "delete", author: opts.author, updatedAt: Date.now() } };
    });
  }

  /**
   * Stores a past version again as a new version, validated again. NOT_FOUND if the history no
   * longer has it; INVALID_ARGUMENT if it names a deletion or a gray release.
   */
  async rollback(ns: string, toRevision: bigint, author: string): Promise<ConfigEntry> {
    checkNamespace(ns);
    if (toRevision <= 0n) throw invalidArgument("to_revision", "must be positive");
    const past = (await this.history(ns)).find((e) => e.revision === toRevision);
    if (past === undefined) {
      throw new ConnectError(
        `revision ${toRevision} of config ${JSON.stringify(ns)} is not in its history (the last ${HISTORY_LIMIT} versions)`,
        Code.NotFound,
      );
    }
    if (past.value === undefined) throw invalidArgument("to_revision", "names a deletion, not a version");
    if (Object.keys(past.grayLabels).length > 0) {
      throw invalidArgument("to_revision", "names a gray release; promote it, or put its value");
    }
    this.validate(ns, past.value);
    return this.putMain(ns, past.value, { author }, "rollback", toRevision);
  }

  /**
   * Makes the gray release the namespace's document (a new version, validated again) and removes
   * the gray release, in one transaction. NOT_FOUND when there is no gray release.
   */
  async promote(ns: string, author: string): Promise<ConfigEntry> {
    checkNamespace(ns);
    const updatedAt = Date.now();
    let value: JsonObject | undefined;
    const revision = await this.commit(ns, (s) => {
      const gray = s.gray?.doc;
      if (gray === undefined) throw notFound("gray release of config", ns);
      this.validate(ns, gray.value);
      value = gray.value;
      const doc: StoredDocument = { value, author, updatedAt };
      return {
        // The document first: a watcher applying events one by one then never sees neither.
        ops: [putOp(this.keys.main + ns, JSON.stringify(doc)), deleteOp(this.keys.gray + ns)],
        history: { action: "promote", value, author, updatedAt },
      };
    });
    return entry(ns, revision, author, updatedAt, value, undefined);
  }

  /** Removes the gray release (recorded as a gray tombstone in the history). NOT_FOUND if none. */
  async abandon(ns: string, author: string): Promise<bigint> {
    checkNamespace(ns);
    return this.commit(ns, (s) => {
      if (s.gray === undefined) throw notFound("gray release of config", ns);
      return {
        ops: [deleteOp(this.keys.gray + ns)],
        history: {
          action: "abandon",
          author,
          updatedAt: Date.now(),
          grayLabels: s.gray.doc?.labels ?? { ...UNKNOWN_GRAY_LABELS },
        },
      };
    });
  }

  /**
   * Documents and gray releases whose namespace starts with `nsPrefix`, sorted by namespace (a
   * document before its gray release), read atomically, with the revision of the read.
   */
  async list(nsPrefix = ""): Promise<{ entries: ConfigEntry[]; revision: bigint }> {
    const range = (p: string): IRequestOp => {
      const r = rangeOfPrefix(p);
      return { request_range: { key: r.start, range_end: r.end } };
    };
    const res = await this.etcd.kv.txn({
      compare: [],
      success: [range(this.keys.main + nsPrefix), range(this.keys.gray + nsPrefix)],
      failure: [],
    });
    const entries: ConfigEntry[] = [];
    const [mains, grays] = [res.responses[0]?.response_range.kvs ?? [], res.responses[1]?.response_range.kvs ?? []];
    for (const kv of mains) {
      const e = this.mainEntry(kv.key.toString("utf8").slice(this.keys.main.length), stored(kv, parseDocument));
      if (e !== undefined) entries.push(e);
    }
    for (const kv of grays) {
      const e = this.grayEntry(kv.key.toString("utf8").slice(this.keys.gray.length), stored(kv, parseDocument));
      if (e !== undefined) entries.push(e);
    }
    const grayRank = (e: ConfigEntry): number => (Object.keys(e.grayLabels).length > 0 ? 1 : 0);
    entries.sort((a, b) =>
      a.namespace === b.namespace ? grayRank(a) - grayRank(b) : a.namespace < b.namespace ? -1 : 1,
    );
    return { entries, revision: BigInt(res.header.revision) };
  }

  /**
   * The documents and gray releases of the given namespaces (all when empty), read atomically, and
   * the revision of the read: the start of a watch.
   */
  async snapshot(namespaces: readonly string[]): Promise<{ entries: ConfigEntry[]; revision: bigint }> {
    // A transaction holds at most 128 operations by default (etcd --max-txn-ops).
    if (namespaces.length === 0 || namespaces.length > 60) {
      const all = await this.list();
      if (namespaces.length === 0) return all;
      const wanted = new Set(namespaces);
      return { entries: all.entries.filter((e) => wanted.has(e.namespace)), revision: all.revision };
    }
    const unique = [...new Set(namespaces)].sort();
    const ops: IRequestOp[] = [];
    for (const ns of unique) {
      ops.push({ request_range: { key: utf8(this.keys.main + ns) } });
      ops.push({ request_range: { key: utf8(this.keys.gray + ns) } });
    }
    const res = await this.etcd.kv.txn({ compare: [], success: ops, failure: [] });
    const entries: ConfigEntry[] = [];
    unique.forEach((ns, i) => {
      const main = res.responses[2 * i]?.response_range.kvs[0];
      const gray = res.responses[2 * i + 1]?.response_range.kvs[0];
      const m = main === undefined ? undefined : this.mainEntry(ns, stored(main, parseDocument));
      const g = gray === undefined ? undefined : this.grayEntry(ns, stored(gray, parseDocument));
      if (m !== undefined) entries.push(m);
      if (g !== undefined) entries.push(g);
    });
    return { entries, revision: BigInt(res.header.revision) };
  }

  /** The current etcd revision (of the whole store). */
  async currentRevision(): Promise<bigint> {
    const res = await this.etcd.get(this.keys.main).exec();
    return BigInt(res.header.revision);
  }

  /**
   * True when etcd no longer keeps revision `revision` (compacted): a watch from it cannot start.
   * False when it does, or when etcd cannot be asked.
   */
  async isCompacted(revision: bigint): Promise<boolean> {
    if (revision <= 0n) return false;
    try {
      await this.etcd.get(this.keys.main).revision(revision.toString()).exec();
      return false;
    } catch (err) {
      return /compact/i.test((err as Error).message);
    }
  }

  /**
   * The namespace's recorded versions, newest first, at most {@link HISTORY_LIMIT}: documents
   * (value set), gray releases (value and gray_labels set), deletions (no value) and abandoned
   * gray releases (gray_labels set, no value). Empty when the namespace never had a document.
   */
  async history(ns: string): Promise<ConfigEntry[]> {
    checkNamespace(ns);
    const r = this.historyRange(ns);
    const res = await this.etcd.getAll().inRange({ start: r.start, end: r.end }).exec();
    const out: { revision: bigint; entry: ConfigEntry }[] = [];
    for (const kv of res.kvs) {
      if (!this.isHistoryKey(ns, kv.key.toString("utf8"))) continue;
      const h = parseHistory(kv.value);
      if (h === undefined) continue;
      const revision = BigInt(kv.mod_revision);
      out.push({ revision, entry: entry(ns, revision, h.author, h.updatedAt, h.value, h.grayLabels) });
    }
    out.sort((a, b) => (a.revision === b.revision ? 0 : a.revision > b.revision ? -1 : 1));
    return out.map((x) => x.entry);
  }

  /**
   * Turns one etcd watch event in {@link ConfigKeys.watchRange} into a ConfigEvent; undefined for
   * history keys and unreadable values. A gray release's DELETE carries its labels (from the
   * event's previous value, so watch with prev_kv).
   */
  eventFromWatch(ev: IEvent): ConfigEvent | undefined {
    const key = ev.kv.key.toString("utf8");
    const isPut = ev.type === "Put";
    let ns: string;
    let gray: boolean;
    if (key.startsWith(this.keys.main)) {
      ns = key.slice(this.keys.main.length);
      gray = false;
    } else if (key.startsWith(this.keys.gray)) {
      ns = key.slice(this.keys.gray.length);
      gray = true;
    } else {
      return undefined;
    }
    const revision = BigInt(ev.kv.mod_revision);
    if (isPut) {
      const kv = stored(ev.kv, parseDocument);
      const e = gray ? this.grayEntry(ns, kv) : this.mainEntry(ns, kv);
      return e === undefined ? undefined : create(ConfigEventSchema, { type: ConfigEvent_Type.PUT, entry: e });
    }
    const grayLabels = gray
      ? ((ev.prev_kv === undefined || ev.prev_kv === null ? undefined : parseDocument(ev.prev_kv.value)?.labels) ?? {
          ...UNKNOWN_GRAY_LABELS,
        })
      : undefined;
    return create(ConfigEventSchema, {
      type: ConfigEvent_Type.DELETE,
      entry: { namespace: ns, revision, ...(grayLabels !== undefined ? { grayLabels } : {}) },
    });
  }

  private async putMain(
    ns: string,
    value: JsonObject,
    opts: WriteOptions,
    action: "put" | "rollback",
    rollbackOf?: bigint,
  ): Promise<ConfigEntry> {
    const updatedAt = Date.now();
    const doc: StoredDocument = { value, author: opts.author, updatedAt };
    const history: StoredHistory = { action, value, author: opts.author, updatedAt };
    if (rollbackOf !== undefined) history.rollbackOf = rollbackOf.toString();
    const revision = await this.commit(ns, (s) => {
      checkExpected(ns, "config", s.main, opts.expectedRevision);
      return { ops: [putOp(this.keys.main + ns, JSON.stringify(doc))], history };
    });
    return entry(ns, revision, opts.author, updatedAt, value, undefined);
  }

  private mainEntry(ns: string, kv: StoredKv<StoredDocument> | undefined): ConfigEntry | undefined {
    if (kv?.doc === undefined) return undefined;
    return entry(ns, kv.modRevision, kv.doc.author, kv.doc.updatedAt, kv.doc.value, undefined);
  }

  private grayEntry(ns: string, kv: StoredKv<StoredDocument> | undefined): ConfigEntry | undefined {
    if (kv?.doc === undefined) return undefined;
    const labels = kv.doc.labels !== undefined && Object.keys(kv.doc.labels).length > 0 ? kv.doc.labels : { ...UNKNOWN_GRAY_LABELS };
    return entry(ns, kv.modRevision, kv.doc.author, kv.doc.updatedAt, kv.doc.value, labels);
  }

  private historyPrefix(ns: string): string {
    return `${this.keys.history}${ns}/`;
  }

  private historyKey(ns: string, n: bigint): string {
    return this.historyPrefix(ns) + n.toString().padStart(HISTORY_DIGITS, "0");
  }

  /**
   * The byte range of a namespace's history keys. It may also hold history keys of namespaces
   * below it whose next segment starts with a digit (`worker/0a`): filter with isHistoryKey.
   */
  private historyRange(ns: string): { start: string; end: string } {
    const p = this.historyPrefix(ns);
    return { start: p + "0".repeat(HISTORY_DIGITS), end: `${p}:` };
  }

  private isHistoryKey(ns: string, key: string): boolean {
    const p = this.historyPrefix(ns);
    return key.length === p.length + HISTORY_DIGITS && key.startsWith(p) && /^[0-9]+$/.test(key.slice(p.length));
  }

  /** Reads a namespace's document, gray release and (keys of its) history in one transaction. */
  private async read(ns: string, withHistory: boolean): Promise<NamespaceState> {
    const ops: IRequestOp[] = [
      { request_range: { key: utf8(this.keys.main + ns) } },
      { request_range: { key: utf8(this.keys.gray + ns) } },
    ];
    if (withHistory) {
      const r = this.historyRange(ns);
      ops.push({ request_range: { key: utf8(r.start), range_end: utf8(r.end), keys_only: true } });
    }
    const res = await this.etcd.kv.txn({ compare: [], success: ops, failure: [] });
    const main = res.responses[0]?.response_range.kvs[0];
    const gray = res.responses[1]?.response_range.kvs[0];
    const history = (res.responses[2]?.response_range.kvs ?? [])
      .map((kv) => kv.key.toString("utf8"))
      .filter((k) => this.isHistoryKey(ns, k))
      .sort();
    return {
      revision: BigInt(res.header.revision),
      main: main === undefined ? undefined : stored(main, parseDocument),
      gray: gray === undefined ? undefined : stored(gray, parseDocument),
      history,
    };
  }

  /**
   * Commits one change with its history entry, optimistically: read, plan (which may throw to
   * refuse), then a transaction that applies only if the document and the gray release are as
   * read and the history key is new. Returns the revision of the change.
   */
  private async commit(ns: string, plan: (s: NamespaceState) => WritePlan): Promise<bigint> {
    for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
      const s = await this.read(ns, true);
      const p = plan(s);
      const historyKey = this.historyKey(ns, s.revision + 1n);
      const excess = s.history.length + 1 - HISTORY_LIMIT;
      const trim = excess > 0 ? s.history.slice(0, excess) : [];
      const res = await this.etcd.kv.txn({
        compare: [
          modEquals(this.keys.main + ns, s.main?.modRevision ?? 0n),
          modEquals(this.keys.gray + ns, s.gray?.modRevision ?? 0n),
          { key: utf8(historyKey), target: "Version", result: "Equal", version: 0 },
        ],
        success: [...p.ops, putOp(historyKey, JSON.stringify(p.history)), ...trim.map(deleteOp)],
        failure: [],
      });
      if (res.succeeded) return BigInt(res.header.revision);
      // Someone else changed the namespace between our read and our commit: read again (a
      // compare-and-set plan then refuses if the revision it expects is gone).
      await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
    }
    throw new ConnectError(`config ${JSON.stringify(ns)} is changing too often; try again`, Code.Aborted);
  }
}

function stored<T>(kv: IKeyValue, parse: (raw: Buffer) => T | undefined): StoredKv<T> {
  return { modRevision: BigInt(kv.mod_revision), doc: parse(kv.value) };
}

/** The etcd range of every key starting with `prefix`. */
function rangeOfPrefix(prefix: string): { start: Buffer; end: Buffer } {
  const start = utf8(prefix);
  const end = Buffer.from(start);
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return { start, end: end.subarray(0, i + 1) };
    }
  }
  return { start, end: Buffer.from([0]) };
}

/** Refuses with FAILED_PRECONDITION when a compare-and-set's expected revision is not the current one. */
function checkExpected(
  ns: string,
  what: string,
  current: StoredKv<StoredDocument> | undefined,
  expected: bigint | undefined,
): void {
  if (expected === undefined) return;
  const name = `${what} ${JSON.stringify(ns)}`;
  if (current === undefined) {
    if (expected !== 0n) throw new ConnectError(`${name} does not exist (expected revision ${expected})`, Code.FailedPrecondition);
    return;
  }
  if (current.modRevision !== expected) {
    throw new ConnectError(
      expected === 0n
        ? `${name} already exists (revision ${current.modRevision})`
        : `${name} is at revision ${current.modRevision}, not ${expected}`,
      Code.FailedPrecondition,
    );
  }
}
