import { create } from "@bufbuild/protobuf";
import type { JsonObject } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Etcd3, IKeyValue } from "etcd3";
import { type ConfigEntry, ConfigEntrySchema } from "../../gen/taskmesh/v1/config_service_pb.js";
import { invalidArgument } from "../../lib/errors.js";

const NAMESPACE = /^[a-z0-9][a-z0-9_.-]*(\/[a-z0-9][a-z0-9_.-]*)*$/;

/** Checks a namespace name ("gateway", "worker/w-1", "my-handlers"). */
export function checkNamespace(ns: string, field = "namespace"): void {
  if (ns === "") throw invalidArgument(field, "is required");
  if (ns.length > 200 || !NAMESPACE.test(ns)) {
    throw invalidArgument(field, "lower-case letters, digits and _ . - in segments separated by /");
  }
}

/** The JSON kept in etcd for one namespace. */
interface StoredDocument {
  value: JsonObject;
  author: string;
  updatedAt: number;
}

/** Decodes one etcd key-value into a ConfigEntry; undefined if it is not ours. */
export function entryFromKv(prefix: string, kv: IKeyValue): ConfigEntry | undefined {
  const key = kv.key.toString();
  if (!key.startsWith(prefix)) return undefined;
  let doc: StoredDocument;
  try {
    doc = JSON.parse(kv.value.toString()) as StoredDocument;
  } catch {
    return undefined;
  }
  return create(ConfigEntrySchema, {
    namespace: key.slice(prefix.length),
    value: doc.value,
    revision: BigInt(kv.mod_revision),
    updatedAt: timestampFromMs(doc.updatedAt),
    author: doc.author,
  });
}

/** Namespaced documents in etcd under `prefix` (`/taskmesh/config/`), with compare-and-set. */
export class ConfigStore {
  constructor(
    private readonly etcd: Etcd3,
    readonly prefix: string,
  ) {}

  /** The current document, or NOT_FOUND. */
  async get(ns: string): Promise<ConfigEntry> {
    checkNamespace(ns);
    const r = await this.etcd.get(this.prefix + ns).exec();
    const kv = r.kvs[0];
    const e = kv === undefined ? undefined : entryFromKv(this.prefix, kv);
    if (e === undefined) throw new ConnectError(`config ${JSON.stringify(ns)} not found`, Code.NotFound);
    return e;
  }

  /**
   * Stores a document. With `expectedRevision`, only if the current revision equals it (0: only if
   * absent); otherwise FAILED_PRECONDITION and nothing is written.
   */
  async put(ns: string, value: JsonObject, author: string, expectedRevision?: bigint): Promise<ConfigEntry> {
    checkNamespace(ns);
    const key = this.prefix + ns;
    const doc: StoredDocument = { value, author, updatedAt: Date.now() };
    const body = JSON.stringify(doc);
    if (expectedRevision === undefined) {
      await this.etcd.put(key).value(body).exec();
    } else {
      const r = await this.etcd
        .if(key, "Mod", "==", String(expectedRevision))
        .then(this.etcd.put(key).value(body))
        .commit();
      if (!r.succeeded) {
        throw new ConnectError(
          `config ${JSON.stringify(ns)} changed since revision ${expectedRevision}`,
          Code.FailedPrecondition,
        );
      }
    }
    return this.get(ns);
  }

  /** Deletes a document (NOT_FOUND if absent; FAILED_PRECONDITION on a stale expected revision). */
  async delete(ns: string, expectedRevision?: bigint): Promise<void> {
    checkNamespace(ns);
    const key = this.prefix + ns;
    const r = await this.etcd
      .if(key, "Mod", expectedRevision === undefined ? ">" : "==", expectedRevision === undefined ? "0" : String(expectedRevision))
      .then(this.etcd.delete().key(key))
      .commit();
    if (!r.succeeded) {
      if (expectedRevision === undefined) throw new ConnectError(`config ${JSON.stringify(ns)} not found`, Code.NotFound);
      throw new ConnectError(`config ${JSON.stringify(ns)} changed since revision ${expectedRevision}`, Code.FailedPrecondition);
    }
  }

  /** Every document whose namespace starts with `nsPrefix`, and the etcd revision of the read. */
  async list(nsPrefix = ""): Promise<{ entries: ConfigEntry[]; revision: bigint }> {
    const r = await this.etcd.getAll().prefix(this.prefix + nsPrefix).exec();
    const entries: ConfigEntry[] = [];
    for (const kv of r.kvs) {
      const e = entryFromKv(this.prefix, kv);
      if (e !== undefined) entries.push(e);
    }
    entries.sort((a, b) => (a.namespace < b.namespace ? -1 : 1));
    return { entries, revision: BigInt(r.header.revision) };
  }
}
