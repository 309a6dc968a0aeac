import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Etcd3 } from "etcd3";
import type { Logger } from "pino";
import { Membership } from "../../lib/membership.js";

/**
 * The scopes an API key can carry. `admin` administers its own tenant (its keys, its tasks) and
 * implies `tasks:write` and `tasks:read`; `cluster:admin` administers what tenants share (every
 * tenant's keys, queues, configuration) and implies everything.
 */
export const SCOPES = ["tasks:write", "tasks:read", "admin", "cluster:admin"] as const;
/** One scope. */
export type Scope = (typeof SCOPES)[number];

/** What is stored in etcd at `<root>apikeys/<id>`: never the secret, only its SHA-256. */
export interface ApiKeyRecord {
  id: string;
  tenant: string;
  scopes: Scope[];
  description: string;
  created: string;
  /** Hex SHA-256 of the secret part of the key. */
  hash: string;
}

/** The authenticated caller of a request. */
export interface Caller {
  keyId: string;
  tenant: string;
  scopes: ReadonlySet<Scope>;
}

const TENANT = /^[A-Za-z0-9_.-]{1,100}$/;
const KEY_FORMAT = /^tm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

function sha256(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** True if `s` is a valid tenant name. */
export function isTenant(s: string): boolean {
  return TENANT.test(s);
}

function parseRecord(id: string, json: string): ApiKeyRecord | undefined {
  try {
    const v = JSON.parse(json) as Partial<ApiKeyRecord>;
    if (typeof v.tenant !== "string" || typeof v.hash !== "string" || !Array.isArray(v.scopes)) return undefined;
    return {
      id,
      tenant: v.tenant,
      scopes: v.scopes.filter((s): s is Scope => (SCOPES as readonly string[]).includes(s)),
      description: typeof v.description === "string" ? v.description : "",
      created: typeof v.created === "string" ? v.created : "",
      hash: v.hash,
    };
  } catch {
    return undefined;
  }
}

/** Options for {@link ApiKeyStore}. */
export interface ApiKeyStoreOptions {
  etcd: Etcd3;
  /** `<root>apikeys/` */
  prefix: string;
  /** The bootstrap admin key (tenant "default"), or "" for none. */
  bootstrapKey: string;
  logger: Logger;
  /** Unknown key ids remembered (the oldest forgotten first). @default 10000 */
  unknownCapacity?: number;
  /** How long an id etcd did not have is remembered as unknown (unless the watch shows it). @default 30000 */
  unknownTtlMs?: number;
  /**
   * etcd reads per second, for all callers together, for key ids the watch has not shown; beyond
   * it the watch's view is final. @default 20
   */
  lookupsPerSecond?: number;
}

/**
 * API keys in etcd, cached by a watch so every gateway replica sees creations and revocations
 * live. A key reads `tm_<16 hex id>_<43 chars secret>`: the id finds the record, the secret is
 * checked against its stored SHA-256 with a constant-time comparison.
 */
export class ApiKeyStore {
  private readonly cache: Membership<ApiKeyRecord>;
  private readonly bootstrap: Buffer | undefined;
  /** Ids etcd did not have, until when that is believed (insertion order: oldest first). */
  private readonly unknown = new Map<string, number>();
  /** etcd reads in flight, by id: concurrent requests with one unknown id make one read. */
  private readonly reading = new Map<string, Promise<ApiKeyRecord | undefined>>();
  private readonly lookups: { tokens: number; at: number };
  private readonly unknownCapacity: number;
  private readonly unknownTtlMs: number;
  private readonly lookupsPerSecond: number;
  /** etcd reads made for ids the watch had not shown (tests and metrics). */
  lookupCount = 0;

  constructor(private readonly opts: ApiKeyStoreOptions) {
    this.cache = new Membership({ client: opts.etcd, prefix: opts.prefix, parse: parseRecord, logger: opts.logger });
    this.bootstrap = opts.bootstrapKey === "" ? undefined : sha256(opts.bootstrapKey);
    this.unknownCapacity = opts.unknownCapacity ?? 10_000;
    this.unknownTtlMs = opts.unknownTtlMs ?? 30_000;
    this.lookupsPerSecond = opts.lookupsPerSecond ?? 20;
    this.lookups = { tokens: this.lookupsPerSecond, at: performance.now() };
    // A key created through another gateway is known from the moment the watch shows it.
    this.cache.on("put", (id) => this.unknown.delete(id));
  }

  /** Loads the keys and starts following changes. */
  start(): Promise<void> {
    return this.cache.start();
  }

  /** The caller a presented key stands for, or undefined if it is unknown, malformed or revoked. */
  async authenticate(presented: string): Promise<Caller | undefined> {
    if (this.bootstrap !== undefined) {
      if (timingSafeEqual(sha256(presented), this.bootstrap)) {
        return { keyId: "bootstrap", tenant: "default", scopes: new Set(SCOPES) };
      }
    }
    const m = KEY_FORMAT.exec(presented);
    if (m === null) return undefined;
    const [, id, secret] = m as unknown as [string, string, string];
    const rec = this.cache.get(id) ?? (await this.lookup(id));
    if (rec === undefined) return undefined;
    const expected = Buffer.from(rec.hash, "hex");
    const got = sha256(secret);
    if (expected.length !== got.length || !timingSafeEqual(expected, got)) return undefined;
    return { keyId: rec.id, tenant: rec.tenant, scopes: new Set(rec.scopes) };
  }

  /**
   * Reads a key the watch has not shown from etcd: it may have been created a moment ago through
   * another gateway. A client guessing ids must not cost etcd a read per request: an id etcd did
   * not have is remembered for a while (bounded), concurrent reads of one id are one read, and
   * all such reads together are limited per second — beyond that the watch's view is final
   * (a key created through another gateway within the last moment may then be refused once).
   */
  private async lookup(id: string): Promise<ApiKeyRecord | undefined> {
    const now = performance.now();
    const until = this.unknown.get(id);
    if (until !== undefined) {
      if (until > now) return undefined;
      this.unknown.delete(id);
    }
    let read = this.reading.get(id);
    if (read === undefined) {
      const b = this.lookups;
      b.tokens = Math.min(this.lookupsPerSecond, b.tokens + ((now - b.at) / 1000) * this.lookupsPerSecond);
      b.at = now;
      if (b.tokens < 1) return undefined;
      b.tokens -= 1;
      this.lookupCount++;
      read = this.opts.etcd
        .get(this.opts.prefix + id)
        .string()
        .then((raw) => (raw === null ? undefined : parseRecord(id, raw)))
        .finally(() => this.reading.delete(id));
      this.reading.set(id, read);
    }
    const rec = await read;
    if (rec === undefined && this.cache.get(id) === undefined) {
      this.unknown.delete(id);
      this.unknown.set(id, performance.now() + this.unknownTtlMs);
      if (this.unknown.size > this.unknownCapacity) {
        const oldest = this.unknown.keys().next().value;
        if (oldest !== undefined) this.unknown.delete(oldest);
      }
    }
    return rec;
  }

  /** Creates a key; the returned secret is the only copy. */
  async create(tenant: string, scopes: Scope[], description: string): Promise<{ record: ApiKeyRecord; secret: string }> {
    const id = randomBytes(8).toString("hex");
    const secretPart = randomBytes(32).toString("base64url");
    const record: ApiKeyRecord = {
      id,
      tenant,
      scopes: [...new Set(scopes)],
      description,
      created: new Date().toISOString(),
      hash: sha256(secretPart).toString("hex"),
    };
    await this.opts.etcd.put(this.opts.prefix + id).value(JSON.stringify(record)).exec();
    return { record, secret: `tm_${id}_${secretPart}` };
  }

  /** Every key, oldest first. */
  async list(): Promise<ApiKeyRecord[]> {
    const all = await this.opts.etcd.getAll().prefix(this.opts.prefix).strings();
    const out: ApiKeyRecord[] = [];
    for (const [k, v] of Object.entries(all)) {
      const r = parseRecord(k.slice(this.opts.prefix.length), v);
      if (r !== undefined) out.push(r);
    }
    return out.sort((a, b) => (a.created < b.created ? -1 : 1));
  }

  /** Deletes a key; false if there was none. */
  async revoke(id: string): Promise<boolean> {
    const r = await this.opts.etcd.delete().key(this.opts.prefix + id).exec();
    return Number(r.deleted) > 0;
  }

  /** Stops following changes. */
  close(): Promise<void> {
    return this.cache.close();
  }
}
