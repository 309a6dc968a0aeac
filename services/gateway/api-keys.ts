import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Etcd3 } from "etcd3";
import type { Logger } from "pino";
import { Membership } from "../../lib/membership.js";

/** The scopes an API key can carry. `admin` implies the other two. */
export const SCOPES = ["tasks:write", "tasks:read", "admin"] as const;
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
}

/**
 * API keys in etcd, cached by a watch so every gateway replica sees creations and revocations
 * live. A key reads `tm_<16 hex id>_<43 chars secret>`: the id finds the record, the secret is
 * checked against its stored SHA-256 with a constant-time comparison.
 */
export class ApiKeyStore {
  private readonly cache: Membership<ApiKeyRecord>;
  private readonly bootstrap: Buffer | undefined;

  constructor(private readonly opts: ApiKeyStoreOptions) {
    this.cache = new Membership({ client: opts.etcd, prefix: opts.prefix, parse: parseRecord, logger: opts.logger });
    this.bootstrap = opts.bootstrapKey === "" ? undefined : sha256(opts.bootstrapKey);
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
    let rec = this.cache.get(id);
    if (rec === undefined) {
      // Created a moment ago through another gateway: the watch may not have delivered it yet.
      const raw = await this.opts.etcd.get(this.opts.prefix + id).string();
      rec = raw === null ? undefined : parseRecord(id, raw);
    }
    if (rec === undefined) return undefined;
    const expected = Buffer.from(rec.hash, "hex");
    const got = sha256(secret);
    if (expected.length !== got.length || !timingSafeEqual(expected, got)) return undefined;
    return { keyId: rec.id, tenant: rec.tenant, scopes: new Set(rec.scopes) };
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
