import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import type { Etcd3 } from "etcd3";
import type { Logger } from "pino";
import {
  ConfigEvent_Type,
  ConfigEventSchema,
  ConfigService,
  DeleteConfigResponseSchema,
  ListConfigsResponseSchema,
  type ConfigEvent,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import { invalidArgument, toConnectError } from "../../lib/errors.js";
import { ConfigStore, checkNamespace, entryFromKv } from "./config-store.js";

/** Header naming who makes a change (the gateway sets the caller's key id). */
export const AUTHOR_HEADER = "x-taskmesh-author";

/** Builds the ConfigService implementation over etcd. */
export function configService(etcd: Etcd3, prefix: string, logger: Logger): Partial<ServiceImpl<typeof ConfigService>> {
  const store = new ConfigStore(etcd, prefix);
  const log = logger.child({ component: "config-service" });
  const guard = async <T>(method: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw toConnectError(err, log, { method });
    }
  };
  return {
    getConfig: (req) => guard("GetConfig", () => store.get(req.namespace)),
    putConfig: (req, ctx) =>
      guard("PutConfig", () => {
        if (req.value === undefined) throw invalidArgument("value", "is required");
        const author = ctx.requestHeader.get(AUTHOR_HEADER) ?? "anonymous";
        return store.put(req.namespace, req.value, author.slice(0, 200), req.expectedRevision);
      }),
    deleteConfig: (req) =>
      guard("DeleteConfig", async () => {
        await store.delete(req.namespace, req.expectedRevision);
        return create(DeleteConfigResponseSchema);
      }),
    listConfigs: (req) =>
      guard("ListConfigs", async () => {
        const { entries } = await store.list(req.prefix);
        return create(ListConfigsResponseSchema, { entries });
      }),
    async *watchConfig(req, ctx) {
      for (const [i, ns] of req.namespaces.entries()) checkNamespace(ns, `namespaces[${i}]`);
      if (req.fromRevision < 0n) throw invalidArgument("from_revision", "must not be negative");
      const wanted = new Set(req.namespaces);
      const match = (ns: string): boolean => wanted.size === 0 || wanted.has(ns);
      const out = new AsyncQueue<ConfigEvent>();
      let startRevision = req.fromRevision + 1n;
      if (req.fromRevision === 0n) {
        const snap = await guard("WatchConfig", () => store.list());
        for (const e of snap.entries) {
          if (match(e.namespace)) out.push(create(ConfigEventSchema, { type: ConfigEvent_Type.PUT, entry: e }));
        }
        startRevision = snap.revision + 1n;
      }
      const watcher = await etcd
        .watch()
        .prefix(prefix)
        .withPreviousKV()
        .startRevision(String(startRevision))
        .create();
      watcher.on("put", (kv) => {
        const e = entryFromKv(prefix, kv);
        if (e !== undefined && match(e.namespace)) {
          out.push(create(ConfigEventSchema, { type: ConfigEvent_Type.PUT, entry: e }));
        }
      });
      watcher.on("delete", (kv) => {
        const ns = kv.key.toString().slice(prefix.length);
        if (!match(ns)) return;
        out.push(
          create(ConfigEventSchema, {
            type: ConfigEvent_Type.DELETE,
            entry: { namespace: ns, revision: BigInt(kv.mod_revision) },
          }),
        );
      });
      watcher.on("error", (err: Error) => {
        const compacted = /compact/i.test(err.message);
        out.end(
          new ConnectError(
            compacted ? "from_revision was compacted; watch again from 0" : "config watch failed",
            compacted ? Code.OutOfRange : Code.Unavailable,
          ),
        );
      });
      const onAbort = (): void => out.end();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        yield* out;
      } finally {
        ctx.signal.removeEventListener("abort", onAbort);
        await watcher.cancel().catch(() => undefined);
      }
    },
  };
}

/** Registers ConfigService on a router. */
export function configRoutes(etcd: Etcd3, prefix: string, logger: Logger): (router: ConnectRouter) => void {
  const impl = configService(etcd, prefix, logger);
  return (router) => router.service(ConfigService, impl);
}
