import { Code, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  ConfigEvent_Type,
  ConfigService,
  file_taskmesh_v1_config_service,
  type ConfigEvent,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer } from "../../lib/server.js";
import { configRoutes } from "../../services/config/config-service.js";
import { uniquePrefix } from "../support/ids.js";

describe("ConfigService over etcd", () => {
  let etcd: Etcd3;
  let server: RpcServer;
  let client: Client<typeof ConfigService>;
  let prefix: string;

  beforeAll(async () => {
    etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    prefix = `/${uniquePrefix("cfg")}/config/`;
    server = await startServer({
      name: "config",
      port: 0,
      routes: configRoutes(etcd, prefix, silentLogger()),
      files: [file_taskmesh_v1_config_service],
      registry: createRegistry("config"),
      logger: silentLogger(),
    });
    client = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${server.address}` }));
  });

  afterAll(async () => {
    await server.close();
    await etcd.delete().prefix(prefix).exec();
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

  it("refuses malformed namespaces and missing values with INVALID_ARGUMENT", async () => {
    await expect(client.getConfig({ namespace: "" })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(client.putConfig({ namespace: "Bad Name", value: {} })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(client.putConfig({ namespace: "ok" })).rejects.toMatchObject({ code: Code.InvalidArgument });
  });

  it("watches: the current documents first, then every change in order; or only changes after a revision", async () => {
    const a = await client.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 10 } });
    const abort = new AbortController();
    const seen: ConfigEvent[] = [];
    const stream = client.watchConfig({ namespaces: ["gateway"] }, { signal: abort.signal });
    const reading = (async () => {
      try {
        for await (const ev of stream) {
          seen.push(ev);
          if (seen.length === 4) abort.abort();
        }
      } catch {
        // aborted
      }
    })();
    const until = async (n: number) => {
      const deadline = Date.now() + 5000;
      while (seen.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    };
    await until(1);
    const b = await client.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 20 } });
    await client.putConfig({ namespace: "other", value: { x: 1 } });
    await until(2);
    await client.deleteConfig({ namespace: "gateway" });
    const c = await client.putConfig({ namespace: "gateway", value: { rate_limit_per_second: 30 } });
    await reading;
    expect(seen.map((e) => [e.type, e.entry?.revision])).toEqual([
      [ConfigEvent_Type.PUT, a.revision],
      [ConfigEvent_Type.PUT, b.revision],
      [ConfigEvent_Type.DELETE, expect.any(BigInt)],
      [ConfigEvent_Type.PUT, c.revision],
    ]);

    const replay: ConfigEvent[] = [];
    const abort2 = new AbortController();
    try {
      for await (const ev of client.watchConfig({ namespaces: ["gateway"], fromRevision: a.revision }, { signal: abort2.signal })) {
        replay.push(ev);
        if (replay.length === 3) abort2.abort();
      }
    } catch {
      // aborted
    }
    expect(replay.map((e) => e.type)).toEqual([ConfigEvent_Type.PUT, ConfigEvent_Type.DELETE, ConfigEvent_Type.PUT]);
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
