import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  ClientClosedError,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  type Etcd3,
  type IWatchResponse,
  type Watcher,
} from "etcd3";
import { isBrokenCircuitError } from "cockatiel";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { etcdCallMetrics } from "../../lib/metrics.js";
import {
  AbandonGrayConfigResponseSchema,
  ConfigEvent_Type,
  ConfigEventSchema,
  ConfigService,
  DeleteConfigResponseSchema,
  GetConfigHistoryResponseSchema,
  ListConfigsResponseSchema,
  type ConfigEvent,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { AsyncQueue } from "../../lib/async-queue.js";
import { cancelWatcher } from "../../lib/membership.js";
import { dependencyUnavailable, invalidArgument, toConnectError } from "../../lib/errors.js";
import { AUTHOR_HEADER } from "../../lib/task-types.js";
import { meshPeer, type AccessPolicy } from "../../lib/mesh-security.js";
import { ConfigStore } from "./config-store.js";
import { checkNamespace } from "./config-validation.js";

/** Author recorded when a change carries no `x-taskmesh-author` header. */
export const ANONYMOUS_AUTHOR = "anonymous";
/** How long a finished watch waits for etcd to confirm its cancellation. */
/** Most namespaces one WatchConfig call may name. */
const MAX_WATCH_NAMESPACES = 1000;

/**
 * A WatchConfig "sync" event: `type` TYPE_UNSPECIFIED and an entry carrying only `revision`. It
 * says: every change up to this revision has been sent. The service sends one right after the
 * current documents (from_revision 0) or at once (from_revision > 0, with that revision), and
 * again whenever etcd reports progress on an idle watch. Clients resume from it after a
 * disconnect; clients that only know PUT and DELETE can ignore it.
 */
export function syncEvent(revision: bigint): ConfigEvent {
  return create(ConfigEventSchema, { type: ConfigEvent_Type.UNSPECIFIED, entry: { revision } });
}

/**
 * The error a caller gets: ConnectErrors as they are; etcd out of reach as UNAVAILABLE with a
 * retry hint, marked DEPENDENCY_UNAVAILABLE (another instance shares the same etcd: the gateway
 * relays it rather than trying elsewhere); anything else through toConnectError.
 */
function rpcError(err: unknown, log: Logger, method: string): ConnectError {
  if (
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCCancelledError ||
    err instanceof ClientClosedError ||
    // etcd3 stops calling an etcd that keeps failing for a while (a cockatiel circuit breaker).
    isBrokenCircuitError(err)
  ) {
    log.warn({ err, method }, "configuration store unavailable");
    return dependencyUnavailable("etcd", err);
  }
  return toConnectError(err, log, { method });
}

/**
 * Who made a change: the gateway, or a caller trusted by loopback or the service token, names the
 * author (the API key) in the author header; an admin calling with its own certificate is
 * `admin:<name>`, whatever it sends (docs/security.md).
 */
function authorOf(ctx: HandlerContext): string {
  const peer = meshPeer(ctx);
  if (peer?.kind === "certificate" && peer.role !== "gateway") return `${peer.role}:${peer.name}`;
  const a = ctx.requestHeader.get(AUTHOR_HEADER)?.trim();
  return a === undefined || a === "" ? ANONYMOUS_AUTHOR : a.slice(0, 200);
}

/**
 * Who may call the config service (docs/security.md): every service reads and watches; only the
 * gateway (for API-key holders) and admins change anything.
 */
export const CONFIG_ACCESS: AccessPolicy = {
  [ConfigService.typeName]: ["gateway", "scheduler", "worker", "config", "admin"],
  ...Object.fromEntries(
    ["PutConfig", "DeleteConfig", "RollbackConfig", "PromoteGrayConfig", "AbandonGrayConfig"].map((m) => [
      `/${ConfigService.typeName}/${m}`,
      ["gateway", "admin"] as const,
    ]),
  ),
};

/**
 * The ConfigService implementation over etcd (see {@link ConfigStore} for the layout).
 *
 * - PutConfig validates the document against its namespace's schema and stores it as a new
 *   version, or as the gray release when `gray_labels` is set; `expected_revision` makes it a
 *   compare-and-set (0: must not exist yet) on the document, or on the gray release for a gray put.
 * - DeleteConfig removes the document and its gray release; the history keeps a tombstone.
 * - GetConfig returns the document (or, when there is none, the gray release); ListConfigs and
 *   WatchConfig return documents and gray releases (entries with `gray_labels`).
 * - WatchConfig: from_revision 0 sends the current documents and gray releases, then a sync event
 *   (see {@link syncEvent}), then every change; from_revision N > 0 sends a sync event and every
 *   change after N, or fails with OUT_OF_RANGE when N was compacted away (or is ahead of etcd:
 *   another cluster) so the client re-reads from 0. A gray release's removal is a DELETE whose
 *   entry has `gray_labels`. When etcd's watch breaks, the stream ends with UNAVAILABLE: the
 *   client resumes from its last revision, here or on another instance.
 */
export function configService(etcd: Etcd3, root: string, logger: Logger, registry?: Registry): ServiceImpl<typeof ConfigService> {
  const store = new ConfigStore(etcd, root);
  const log = logger.child({ component: "config-service" });
  // The store's work per call is its etcd round trips: timed per operation.
  const etcdSeconds = registry === undefined ? undefined : etcdCallMetrics(registry);
  const guard = async <T>(method: string, fn: () => Promise<T>): Promise<T> => {
    const end = etcdSeconds?.startTimer({ op: method });
    try {
      return await fn();
    } catch (err) {
      throw rpcError(err, log, method);
    } finally {
      end?.();
    }
  };
  return {
    getConfig: (req) => guard("GetConfig", () => store.get(req.namespace)),
    putConfig: (req, ctx) =>
      guard("PutConfig", async () => {
        if (req.value === undefined) throw invalidArgument("value", "is required");
        const opts = { author: authorOf(ctx), expectedRevision: req.expectedRevision };
        const gray = Object.keys(req.grayLabels).length > 0;
        const e = gray
          ? await store.putGray(req.namespace, req.value, req.grayLabels, opts)
          : await store.put(req.namespace, req.value, opts);
        log.info({ namespace: req.namespace, revision: String(e.revision), author: opts.author, gray }, "config stored");
        return e;
      }),
    deleteConfig: (req, ctx) =>
      guard("DeleteConfig", async () => {
        const author = authorOf(ctx);
        const revision = await store.delete(req.namespace, { author, expectedRevision: req.expectedRevision });
        log.info({ namespace: req.namespace, revision: String(revision), author }, "config deleted");
        return create(DeleteConfigResponseSchema);
      }),
    listConfigs: (req) =>
      guard("ListConfigs", async () => {
        const { entries } = await store.list(req.prefix);
        return create(ListConfigsResponseSchema, { entries });
      }),
    getConfigHistory: (req) =>
      guard("GetConfigHistory", async () =>
        create(GetConfigHistoryResponseSchema, { entries: await store.history(req.namespace) }),
      ),
    rollbackConfig: (req, ctx) =>
      guard("RollbackConfig", async () => {
        const author = authorOf(ctx);
        const e = await store.rollback(req.namespace, req.toRevision, author);
        log.info(
          { namespace: req.namespace, revision: String(e.revision), to: String(req.toRevision), author },
          "config rolled back",
        );
        return e;
      }),
    promoteGrayConfig: (req, ctx) =>
      guard("PromoteGrayConfig", async () => {
        const author = authorOf(ctx);
        const e = await store.promote(req.namespace, author);
        log.info({ namespace: req.namespace, revision: String(e.revision), author }, "gray config promoted");
        return e;
      }),
    abandonGrayConfig: (req, ctx) =>
      guard("AbandonGrayConfig", async () => {
        const author = authorOf(ctx);
        const revision = await store.abandon(req.namespace, author);
        log.info({ namespace: req.namespace, revision: String(revision), author }, "gray config abandoned");
        return create(AbandonGrayConfigResponseSchema);
      }),
    watchConfig: (req, ctx) => watchConfig(etcd, store, log, req.namespaces, req.fromRevision, ctx),
  };
}

async function* watchConfig(
  etcd: Etcd3,
  store: ConfigStore,
  log: Logger,
  namespaces: readonly string[],
  fromRevision: bigint,
  ctx: HandlerContext,
): AsyncGenerator<ConfigEvent> {
  if (namespaces.length > MAX_WATCH_NAMESPACES) {
    throw invalidArgument("namespaces", `at most ${MAX_WATCH_NAMESPACES}`);
  }
  for (const [i, ns] of namespaces.entries()) checkNamespace(ns, `namespaces[${i}]`);
  if (fromRevision < 0n) throw invalidArgument("from_revision", "must not be negative");
  const wanted = new Set(namespaces);
  const match = (ns: string): boolean => wanted.size === 0 || wanted.has(ns);
  const out = new AsyncQueue<ConfigEvent>();
  let start: bigint;
  try {
    if (fromRevision === 0n) {
      const snap = await store.snapshot(namespaces);
      for (const e of snap.entries) out.push(create(ConfigEventSchema, { type: ConfigEvent_Type.PUT, entry: e }));
      start = snap.revision;
    } else {
      const current = await store.currentRevision();
      if (fromRevision > current) {
        throw new ConnectError(
          `from_revision ${fromRevision} is ahead of the store (at ${current}); watch again from 0`,
          Code.OutOfRange,
        );
      }
      start = fromRevision;
    }
  } catch (err) {
    throw rpcError(err, log, "WatchConfig");
  }
  out.push(syncEvent(start));

  // watcher() (not create()) so the listeners are in place before etcd replays anything.
  const watcher: Watcher = etcd
    .watch()
    .inRange(store.keys.watchRange)
    .withPreviousKV()
    .startRevision(String(start + 1n))
    .watcher();
  let failed = false;
  const fail = (err: ConnectError): void => {
    if (failed) return;
    failed = true;
    out.end(err);
  };
  watcher.on("data", (res: IWatchResponse) => {
    if (failed) return;
    if (res.events.length === 0) {
      // A progress notification: everything up to this revision has been delivered.
      out.push(syncEvent(BigInt(res.header.revision)));
      return;
    }
    for (const ev of res.events) {
      const e = store.eventFromWatch(ev);
      if (e !== undefined && match(e.entry?.namespace ?? "")) out.push(e);
    }
  });
  // etcd3 would re-attach the watch by itself from the last revision it saw, which may skip
  // events it had not delivered: end the stream instead, the client resumes from its own revision.
  watcher.on("disconnected", (err: Error) => {
    log.warn({ err }, "etcd watch disconnected, ending config watch");
    fail(new ConnectError("config watch interrupted; resume from the last revision", Code.Unavailable));
  });
  // etcd cancelled the watch. etcd 3.4 gives no reason when the start revision was compacted
  // (only compact_revision, which etcd3 does not pass on): ask etcd whether it was.
  watcher.on("error", (err: Error) => {
    void (async () => {
      const compacted = /compact/i.test(err.message) || (await store.isCompacted(start));
      if (!compacted) log.warn({ err }, "etcd watch failed");
      fail(
        compacted
          ? new ConnectError("from_revision was compacted; watch again from 0", Code.OutOfRange)
          : new ConnectError("config watch failed", Code.Unavailable),
      );
    })();
  });
  const onAbort = (): void => out.end();
  ctx.signal.addEventListener("abort", onAbort, { once: true });
  try {
    yield* out;
  } finally {
    ctx.signal.removeEventListener("abort", onAbort);
    await cancelWatcher(watcher, log);
  }
}


/**
 * Registers ConfigService on a router: the one `routes` function shared by `main.ts` and tests.
 * @param root the etcd root of taskmesh's keys, e.g. "/taskmesh/"
 */
export function configRoutes(etcd: Etcd3, root: string, logger: Logger, registry?: Registry): (router: ConnectRouter) => void {
  const impl = configService(etcd, root, logger, registry);
  return (router) => router.service(ConfigService, impl);
}
