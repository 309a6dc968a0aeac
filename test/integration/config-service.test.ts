import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  ConfigEvent_Type,
  ConfigService,
  file_taskmesh_v1_config_service,
  type ConfigEvent,
  type WatchConfigRequestSchema,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer } from "../../lib/server.js";
import { AUTHOR_HEADER } from "../../lib/task-types.js";
import { configRoutes } from "../../services/config/config-service.js";
import { HISTORY_LIMIT } from "../../services/config/config-store.js";
import { startEtcd } from "../support/backends.js";
import { uniquePrefix } from "../support/ids.js";
import { waitFor } from "../support/wait.js";

type ConfigClient = Client<typeof ConfigService>;

async function startConfigServer(etcd: Etcd3, root: string): Promise<{ server: RpcServer; client: ConfigClient }> {
  const server = await startServer({
    name: "config",
    port: 0,
    routes: configRoutes(etcd, root, silentLogger()),
    files: [file_taskmesh_v1_config_service],
    registry: createRegistry("config"),
    logger: silentLogger(),
  });
  return { server, client: createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${server.address}` })) };
}

/** A running WatchConfig: the events so far (sync events apart), and a way to stop it. */
interface Watch {
  events: ConfigEvent[];
  syncs: bigint[];
  /** Set when the stream failed. */
  error: ConnectError | undefined;
  stop(): Promise<void>;
}

function watch(client: ConfigClient, req: MessageInitShape<typeof WatchConfigRequestSchema>): Watch {
  const abort = new AbortController();
  const w: Watch = {
    events: [],
    syncs: [],
    error: undefined,
    async stop() {
      abort.abort();
      await reading;
    },
  };
  const reading = (async () => {
    try {
      for await (const ev of client.watchConfig(req, { signal: abort.signal })) {
        if (ev.type === ConfigEvent_Type.UNSPECIFIED) w.syncs.push(ev.entry?.revision ?? 0n);
        else w.events.push(ev);
      }
    } catch (err) {
      if (!abort.signal.aborted) w.error = ConnectError.from(err);
    }
  })();
  return w;
}

/** `PUT ns rev value` / `DELETE ns rev` / with ` gray` for gray entries. */
function describeEvent(ev: ConfigEvent): string {
  const e = ev.entry;
  const gray = e !== undefined && Object.keys(e.grayLabels).length > 0 ? " gray" : "";
  return ev.type === ConfigEvent_Type.PUT
    ? `PUT ${e?.namespace}${gray} ${JSON.stringify(e?.value)}`
    : `DELETE ${e?.namespace}${gray}`;
}

describe("ConfigService over etcd", () => {
  let etcd: Etcd3;
  let server: RpcServer;
  let client: ConfigClient;
  let root: string;

  beforeAll(async () => {
    etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    root = `/${uniquePrefix("cfg")}/`;
    ({ server, client } = await startConfigServer(etcd, root));
  });

  afterAll(async () => {
    await server.close();
    await etcd.delete().prefix(root).exec();
    etcd.close();
  });

  it("stores, reads, lists and deletes namespaced documents", async () => {
    const put = await client.putConfig({ namespace: "worker/w-1", value: { slots: 8 } });
    expect(put.namespace).toBe("worker/w-1");
    expect(put.value).toEqual({ slots: 8 });
    expect(put.revision).toBeGreaterThan(0n);
    expect((await client.getConfig({ namespace: "worker/w-1" })).revision).toBe(put.revision);
    await client.putConfig({ namespace: "worker", value: { slots: 2 } });
    const list = await client.listConfigs({ prefix: "worker" });
    expect(list.entries.map((e) => e.namespace)).toEqual(["worker", "worker/w-1"]);
    await client.deleteConfig({ namespace: "worker/w-1" });
    await expect(client.getConfig({ namespace: "worker/w-1" })).rejects.toMatchObject({ code: Code.NotFound });
    await expect(client.deleteConfig({ namespace: "worker/w-1" })).rejects.toMatchObject({ code: Code.NotFound });
  });

  it("compare-and-set refuses a stale revision and writes nothing", async () => {
    const first = await client.putConfig({ namespace: "scheduler", value: { task_lease_ms: 5000 } });
    const second = await client.putConfig({
      namespace: "scheduler",
      value: { task_lease_ms: 6000 },
      expectedRevision: first.revision,
    });
    await expect(
      client.putConfig({ namespace: "scheduler", value: { task_lease_ms: 7000 }, expectedRevision: first.revision }),
    ).rejects.toMatchObject({ code: Code.FailedPrecondition });
    const now = await client.getConfig({ namespace: "scheduler" });
    expect(now.revision).toBe(second.revision);
    expect(now.value).toEqual({ task_lease_ms: 6000 });
  });

  it("compare-and-set with expected_revision 0 creates only, and deletes check their revision too", async () => {
    const created = await client.putConfig({ namespace: "cas-ns", value: { a: 1 }, expectedRevision: 0n });
    await expect(client.putConfig({ namespace: "cas-ns", value: { a: 2 }, expectedRevision: 0n })).rejects.toMatchObject({
      code: Code.FailedPrecondition,
      rawMessage: expect.stringContaining("already exists"),
    });
    await expect(
      client.putConfig({ namespace: "cas-absent", value: { a: 2 }, expectedRevision: created.revision }),
    ).rejects.toMatchObject({ code: Code.FailedPrecondition });
    const updated = await client.putConfig({ namespace: "cas-ns", value: { a: 3 } });
    await expect(client.deleteConfig({ namespace: "cas-ns", expectedRevision: created.revision })).rejects.toMatchObject({
      code: Code.FailedPrecondition,
    });
    expect((await client.getConfig({ namespace: "cas-ns" })).value).toEqual({ a: 3 });
    await client.deleteConfig({ namespace: "cas-ns", expectedRevision: updated.revision });
    await expect(client.getConfig({ namespace: "cas-ns" })).rejects.toMatchObject({ code: Code.NotFound });
  });

  it("serialises concurrent writers of one namespace: every put lands, each as its own version", async () => {
    const puts = await Promise.all(
      Array.from({ length: 20 }, (_, i) => client.putConfig({ namespace: "contended", value: { i } })),
    );
    const revisions = puts.map((p) => p.revision);
    expect(new Set(revisions).size).toBe(20);
    const history = await client.getConfigHistory({ namespace: "contended" });
    expect(history.entries.map((e) => e.revision)).toEqual([...revisions].sort((a, b) => (a > b ? -1 : 1)));
  });

  it("refuses malformed namespaces and missing values with INVALID_ARGUMENT", async () => {
    await expect(client.getConfig({ namespace: "" })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(client.putConfig({ namespace: "Bad Name", value: {} })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(client.putConfig({ namespace: "ok" })).rejects.toMatchObject({ code: Code.InvalidArgument });
  });

  it("refuses invalid documents naming the field, and writes nothing (no version, no history)", async () => {
    const good = await client.putConfig({ namespace: "worker/w-valid", value: { slots: 4 } });
    const cases: [Record<string, unknown>, string][] = [
      [{ slots: 0 }, "value.slots: must be between 1 and 10000"],
      [{ slots: 4, bogus: 1 }, "value.bogus: unknown field"],
      [{ slots: "four" }, "value.slots: must be an integer"],
    ];
    for (const [value, message] of cases) {
      const err = await client
        .putConfig({ namespace: "worker/w-valid", value: value as never })
        .then(() => undefined, (e: unknown) => ConnectError.from(e));
      expect(err?.code).toBe(Code.InvalidArgument);
      expect(err?.rawMessage).toBe(message);
      // Gray releases are validated the same way.
      await expect(
        client.putConfig({ namespace: "worker/w-valid", value: value as never, grayLabels: { canary: "true" } }),
      ).rejects.toMatchObject({ code: Code.InvalidArgument, rawMessage: message });
    }
    const now = await client.getConfig({ namespace: "worker/w-valid" });
    expect(now.revision).toBe(good.revision);
    expect(now.value).toEqual({ slots: 4 });
    expect((await client.getConfigHistory({ namespace: "worker/w-valid" })).entries).toHaveLength(1);
    expect((await client.listConfigs({ prefix: "worker/w-valid" })).entries).toHaveLength(1);
  });

  it(`keeps the last ${HISTORY_LIMIT} versions, newest first, with author and time`, async () => {
    const before = Date.now();
    const revisions: bigint[] = [];
    for (let i = 1; i <= HISTORY_LIMIT + 1; i++) {
      const e = await client.putConfig(
        { namespace: "hist", value: { i } },
        { headers: { [AUTHOR_HEADER]: `key-${i % 3}` } },
      );
      expect(e.author).toBe(`key-${i % 3}`);
      revisions.push(e.revision);
    }
    const { entries } = await client.getConfigHistory({ namespace: "hist" });
    expect(entries).toHaveLength(HISTORY_LIMIT);
    expect(entries.map((e) => e.value)).toEqual(
      Array.from({ length: HISTORY_LIMIT }, (_, k) => ({ i: HISTORY_LIMIT + 1 - k })),
    );
    expect(entries.map((e) => e.revision)).toEqual(revisions.slice(1).reverse());
    expect(entries[0]?.author).toBe(`key-${(HISTORY_LIMIT + 1) % 3}`);
    const ms = Number(entries[0]?.updatedAt?.seconds ?? 0n) * 1000;
    expect(ms).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    // Without the header the author is "anonymous".
    expect((await client.putConfig({ namespace: "hist", value: { i: 0 } })).author).toBe("anonymous");
    // The history keys in etcd: 50, under config-history/hist/<20 digits>.
    const keys = await etcd.getAll().prefix(`${root}config-history/hist/`).keys();
    expect(keys).toHaveLength(HISTORY_LIMIT);
    for (const k of keys) expect(k).toMatch(/\/config-history\/hist\/\d{20}$/);
  });

  it("keeps a namespace's history apart from the namespaces below it", async () => {
    await client.putConfig({ namespace: "tree", value: { level: 0 } });
    await client.putConfig({ namespace: "tree/0abc", value: { level: 1 } });
    await client.putConfig({ namespace: "tree/00000000000000000001", value: { level: 1 } });
    expect((await client.getConfigHistory({ namespace: "tree" })).entries.map((e) => e.value)).toEqual([{ level: 0 }]);
    expect((await client.getConfigHistory({ namespace: "tree/0abc" })).entries).toHaveLength(1);
  });

  it("records deletions, gray releases and abandons in the history", async () => {
    const ns = "worker/w-hist";
    const put = await client.putConfig({ namespace: ns, value: { slots: 1 } });
    const gray = await client.putConfig({ namespace: ns, value: { slots: 2 }, grayLabels: { canary: "true" } });
    await client.abandonGrayConfig({ namespace: ns }, { headers: { [AUTHOR_HEADER]: "ops" } });
    await client.deleteConfig({ namespace: ns }, { headers: { [AUTHOR_HEADER]: "ops" } });
    const { entries } = await client.getConfigHistory({ namespace: ns });
    expect(
      entries.map((e) => ({ value: e.value, gray: e.grayLabels, author: e.author })),
    ).toEqual([
      { value: undefined, gray: {}, author: "ops" }, // the deletion: a tombstone
      { value: undefined, gray: { canary: "true" }, author: "ops" }, // the abandoned gray release
      { value: { slots: 2 }, gray: { canary: "true" }, author: "anonymous" },
      { value: { slots: 1 }, gray: {}, author: "anonymous" },
    ]);
    expect(entries[2]?.revision).toBe(gray.revision);
    expect(entries[3]?.revision).toBe(put.revision);
    expect(entries[0]?.revision).toBeGreaterThan(entries[1]?.revision ?? 0n);
  });

  it("rolls back to a past version as a new version, and refuses what cannot be restored", async () => {
    const ns = "gateway";
    const v1 = await client.putConfig({ namespace: ns, value: { rate_limit_per_second: 10 } });
    await client.putConfig({ namespace: ns, value: { rate_limit_per_second: 20 } });
    const back = await client.rollbackConfig({ namespace: ns, toRevision: v1.revision }, { headers: { [AUTHOR_HEADER]: "k1" } });
    expect(back.value).toEqual({ rate_limit_per_second: 10 });
    expect(back.revision).toBeGreaterThan(v1.revision);
    expect(back.author).toBe("k1");
    const now = await client.getConfig({ namespace: ns });
    expect(now).toMatchObject({ revision: back.revision, value: { rate_limit_per_second: 10 } });
    const history = await client.getConfigHistory({ namespace: ns });
    expect(history.entries[0]).toMatchObject({ revision: back.revision, value: { rate_limit_per_second: 10 } });

    await expect(client.rollbackConfig({ namespace: ns, toRevision: 1n })).rejects.toMatchObject({ code: Code.NotFound });
    await expect(client.rollbackConfig({ namespace: ns, toRevision: 0n })).rejects.toMatchObject({ code: Code.InvalidArgument });
    // A deletion is not a version.
    await client.putConfig({ namespace: "rb-del", value: { x: 1 } });
    await client.deleteConfig({ namespace: "rb-del" });
    const tomb = (await client.getConfigHistory({ namespace: "rb-del" })).entries[0];
    await expect(client.rollbackConfig({ namespace: "rb-del", toRevision: tomb?.revision ?? 0n })).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "to_revision: names a deletion, not a version",
    });
  });

  it("validates a rollback again: a past version the rules now refuse is not restored", async () => {
    // A version stored before a rule tightened, written straight into etcd.
    const ns = "worker/w-old";
    const current = await client.putConfig({ namespace: ns, value: { slots: 3 } });
    const res = await etcd
      .put(`${root}config-history/${ns}/00000000000000000001`)
      .value(JSON.stringify({ action: "put", value: { slots: 50_000 }, author: "legacy", updatedAt: Date.now() }))
      .exec();
    const legacy = BigInt(res.header.revision);
    expect((await client.getConfigHistory({ namespace: ns })).entries.map((e) => e.revision)).toContain(legacy);
    await expect(client.rollbackConfig({ namespace: ns, toRevision: legacy })).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "value.slots: must be between 1 and 10000",
    });
    expect((await client.getConfig({ namespace: ns })).revision).toBe(current.revision);
  });

  it("gray releases: stored beside the document, listed and watched, promoted or abandoned", async () => {
    const ns = "worker/w-gray";
    const main = await client.putConfig({ namespace: ns, value: { slots: 2 } });
    const w = watch(client, { namespaces: [ns], fromRevision: main.revision });
    await waitFor(() => w.syncs.length > 0, { what: "watch started" });

    const gray = await client.putConfig({ namespace: ns, value: { slots: 4 }, grayLabels: { canary: "true" } });
    expect(gray.grayLabels).toEqual({ canary: "true" });
    // The document is unchanged; the list shows both, the document first.
    expect(await client.getConfig({ namespace: ns })).toMatchObject({ revision: main.revision, value: { slots: 2 } });
    const listed = (await client.listConfigs({ prefix: ns })).entries;
    expect(listed.map((e) => [e.value, e.grayLabels])).toEqual([
      [{ slots: 2 }, {}],
      [{ slots: 4 }, { canary: "true" }],
    ]);
    // Compare-and-set of a gray put compares the gray release.
    await expect(
      client.putConfig({ namespace: ns, value: { slots: 5 }, grayLabels: { canary: "true" }, expectedRevision: 0n }),
    ).rejects.toMatchObject({ code: Code.FailedPrecondition });

    const promoted = await client.promoteGrayConfig({ namespace: ns });
    expect(promoted).toMatchObject({ value: { slots: 4 }, grayLabels: {} });
    expect(promoted.revision).toBeGreaterThan(gray.revision);
    expect((await client.listConfigs({ prefix: ns })).entries.map((e) => e.value)).toEqual([{ slots: 4 }]);
    await expect(client.promoteGrayConfig({ namespace: ns })).rejects.toMatchObject({ code: Code.NotFound });

    await client.putConfig({ namespace: ns, value: { slots: 8 }, grayLabels: { canary: "true", zone: "b" } });
    await client.abandonGrayConfig({ namespace: ns });
    expect((await client.listConfigs({ prefix: ns })).entries.map((e) => e.value)).toEqual([{ slots: 4 }]);
    await expect(client.abandonGrayConfig({ namespace: ns })).rejects.toMatchObject({ code: Code.NotFound });

    await waitFor(() => w.events.length >= 5, { what: "gray events" });
    await w.stop();
    expect(w.events.map(describeEvent)).toEqual([
      `PUT ${ns} gray {"slots":4}`,
      `PUT ${ns} {"slots":4}`, // promote: the document first...
      `DELETE ${ns} gray`, // ...then the gray release goes, in the same revision
      `PUT ${ns} gray {"slots":8}`,
      `DELETE ${ns} gray`,
    ]);
    expect(w.events[1]?.entry?.revision).toBe(w.events[2]?.entry?.revision);
    expect(w.events[4]?.entry?.grayLabels).toEqual({ canary: "true", zone: "b" });
  });

  it("returns a gray release from GetConfig when there is no document, and deletes it with the document", async () => {
    const ns = "gray-only";
    await client.putConfig({ namespace: ns, value: { v: 1 }, grayLabels: { canary: "true" } });
    expect(await client.getConfig({ namespace: ns })).toMatchObject({ value: { v: 1 }, grayLabels: { canary: "true" } });
    await expect(client.deleteConfig({ namespace: ns })).rejects.toMatchObject({ code: Code.NotFound });
    await client.putConfig({ namespace: ns, value: { v: 0 } });
    await client.deleteConfig({ namespace: ns });
    expect((await client.listConfigs({ prefix: ns })).entries).toEqual([]);
  });

  it("watches: the current documents first, then every change in order; or only changes after a revision", async () => {
    const a = await client.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 10 } });
    const w = watch(client, { namespaces: ["gateway"] });
    await waitFor(() => w.syncs.length === 1, { what: "snapshot" });
    expect(w.events.map((e) => [e.type, e.entry?.revision])).toEqual([[ConfigEvent_Type.PUT, a.revision]]);
    expect(w.syncs[0]).toBeGreaterThanOrEqual(a.revision);
    const b = await client.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 20 } });
    await client.putConfig({ namespace: "other", value: { x: 1 } });
    await client.deleteConfig({ namespace: "gateway" });
    const c = await client.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 30 } });
    await waitFor(() => w.events.length >= 4, { what: "4 events" });
    await w.stop();
    expect(w.events.map((e) => [e.type, e.entry?.revision])).toEqual([
      [ConfigEvent_Type.PUT, a.revision],
      [ConfigEvent_Type.PUT, b.revision],
      [ConfigEvent_Type.DELETE, expect.any(BigInt)],
      [ConfigEvent_Type.PUT, c.revision],
    ]);

    const replay = watch(client, { namespaces: ["gateway"], fromRevision: a.revision });
    await waitFor(() => replay.events.length >= 3, { what: "replay" });
    await replay.stop();
    expect(replay.syncs[0]).toBe(a.revision);
    expect(replay.events.map((e) => e.type)).toEqual([ConfigEvent_Type.PUT, ConfigEvent_Type.DELETE, ConfigEvent_Type.PUT]);
  });

  it("resumes a watch from the last revision seen: the changes made while away arrive, in order", async () => {
    const ns = "resume-ns";
    const first = watch(client, { namespaces: [ns] });
    await waitFor(() => first.syncs.length === 1, { what: "first watch" });
    await client.putConfig({ namespace: ns, value: { n: 1 } });
    await waitFor(() => first.events.length === 1, { what: "first event" });
    await first.stop();
    const last = first.events[0]?.entry?.revision ?? 0n;

    for (let n = 2; n <= 6; n++) await client.putConfig({ namespace: ns, value: { n } });
    await client.deleteConfig({ namespace: ns });
    await client.putConfig({ namespace: ns, value: { n: 7 } });

    const resumed = watch(client, { namespaces: [ns], fromRevision: last });
    await waitFor(() => resumed.events.length >= 7, { what: "missed changes" });
    await resumed.stop();
    expect(resumed.events.map(describeEvent)).toEqual([
      `PUT ${ns} {"n":2}`,
      `PUT ${ns} {"n":3}`,
      `PUT ${ns} {"n":4}`,
      `PUT ${ns} {"n":5}`,
      `PUT ${ns} {"n":6}`,
      `DELETE ${ns}`,
      `PUT ${ns} {"n":7}`,
    ]);
  });

  it("fails a watch from a revision ahead of the store with OUT_OF_RANGE", async () => {
    const w = watch(client, { namespaces: ["x"], fromRevision: 1n << 40n });
    await waitFor(() => w.error !== undefined, { what: "error" });
    expect(w.error?.code).toBe(Code.OutOfRange);
  });

  it("serves Connect JSON over HTTP/1.1 too", async () => {
    const json = createClient(
      ConfigService,
      createConnectTransport({ baseUrl: `http://${server.address}`, httpVersion: "1.1" }),
    );
    await json.putConfig({ namespace: "json-ns", value: { a: [1, "two"] } });
    expect((await json.getConfig({ namespace: "json-ns" })).value).toEqual({ a: [1, "two"] });
  });
});

describe("ConfigService watch and compaction", () => {
  it("fails a watch from a compacted revision with OUT_OF_RANGE", async () => {
    // Compaction is global to an etcd: use a private one.
    const backend = await startEtcd();
    const etcd = new Etcd3({ hosts: backend.address });
    const { server, client } = await startConfigServer(etcd, "/taskmesh/");
    try {
      const old = await client.putConfig({ namespace: "c", value: { n: 1 } });
      const last = await client.putConfig({ namespace: "c", value: { n: 2 } });
      await etcd.kv.compact({ revision: String(last.revision), physical: true });
      const w = watch(client, { namespaces: ["c"], fromRevision: old.revision - 1n });
      await waitFor(() => w.error !== undefined, { what: "error" });
      expect(w.error?.code).toBe(Code.OutOfRange);
      // From the compaction point on, it works.
      const ok = watch(client, { namespaces: ["c"], fromRevision: last.revision });
      await client.putConfig({ namespace: "c", value: { n: 3 } });
      await waitFor(() => ok.events.length === 1, { what: "event after compaction" });
      await ok.stop();
      expect(ok.error).toBeUndefined();
    } finally {
      await server.close();
      etcd.close();
      await backend.stop();
    }
  });
});

describe("ConfigService without etcd", () => {
  it("answers UNAVAILABLE (retryable) when etcd cannot be reached", async () => {
    const backend = await startEtcd();
    const etcd = new Etcd3({ hosts: backend.address });
    const { server, client } = await startConfigServer(etcd, "/taskmesh/");
    try {
      await client.putConfig({ namespace: "a", value: { x: 1 } });
      await backend.stop();
      await expect(client.putConfig({ namespace: "a", value: { x: 2 } })).rejects.toMatchObject({ code: Code.Unavailable });
      await expect(client.getConfig({ namespace: "a" })).rejects.toMatchObject({ code: Code.Unavailable });
      const w = watch(client, { fromRevision: 2n });
      await waitFor(() => w.error !== undefined, { what: "watch error" });
      expect(w.error?.code).toBe(Code.Unavailable);
    } finally {
      await server.close();
      etcd.close();
      await backend.stop();
    }
  });
});
