import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JsonObject } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Etcd3 } from "etcd3";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import {
  ConfigService,
  WorkerConfigSchema,
  file_taskmesh_v1_config_service,
} from "../../gen/taskmesh/v1/config_service_pb.js";
import { ConfigClient, decodeConfig, workerNamespaces, type ConfigClientOptions } from "../../lib/config-client.js";
import { silentLogger } from "../../lib/logger.js";
import { createRegistry } from "../../lib/metrics.js";
import { startServer, type RpcServer } from "../../lib/server.js";
import { configRoutes } from "../../services/config/config-service.js";
import { startEtcd, type Backend } from "../support/backends.js";
import { startService } from "../support/mesh.js";
import { uniquePrefix } from "../support/ids.js";
import { freePort } from "../support/ports.js";
import { waitFor } from "../support/wait.js";

type Writer = Client<typeof ConfigService>;

interface ConfigServer {
  server: RpcServer;
  writer: Writer;
  address: string;
}

async function startConfigServer(etcd: Etcd3, root: string): Promise<ConfigServer> {
  const server = await startServer({
    name: "config",
    port: 0,
    routes: configRoutes(etcd, root, silentLogger()),
    files: [file_taskmesh_v1_config_service],
    registry: createRegistry("config"),
    logger: silentLogger(),
    shutdownGraceMs: 100,
  });
  const writer = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${server.address}` }));
  return { server, writer, address: server.address };
}

/** Records a client's changes as `ns=<json>` (`ns=-` for undefined). */
function record(c: ConfigClient): string[] {
  const out: string[] = [];
  c.on("change", (ns, value) => out.push(`${ns}=${value === undefined ? "-" : JSON.stringify(value)}`));
  return out;
}

describe("ConfigClient", () => {
  let etcd: Etcd3;
  let root: string;
  let dir: string;
  const cleanup: (() => Promise<unknown> | unknown)[] = [];

  beforeEach(async () => {
    etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    root = `/${uniquePrefix("cfgc")}/`;
    dir = await mkdtemp(join(tmpdir(), "taskmesh-config-client-"));
  });

  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
    await etcd.delete().prefix(root).exec();
    etcd.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function server(client: Etcd3 = etcd): Promise<ConfigServer> {
    const s = await startConfigServer(client, root);
    cleanup.push(() => s.server.close());
    return s;
  }

  function configClient(opts: Partial<ConfigClientOptions> & Pick<ConfigClientOptions, "addresses" | "namespaces">): ConfigClient {
    const c = new ConfigClient({ logger: silentLogger(), backoffInitialMs: 20, backoffMaxMs: 200, ...opts });
    cleanup.push(() => c.close());
    return c;
  }

  it("starts from the current documents, then applies live changes within a second", async () => {
    const s = await server();
    const w1 = await s.writer.putConfig({ namespace: "worker", value: { slots: 2, heartbeat_ms: 1000 } });
    const o1 = await s.writer.putConfig({ namespace: "worker/w-1", value: { slots: 5 } });
    const registry = new Registry();
    const cacheFile = join(dir, "config.json");
    const c = configClient({
      addresses: () => [s.address],
      namespaces: workerNamespaces("w-1"),
      cacheFile,
      registry,
    });
    const changes = record(c);
    await c.start();
    expect(c.state).toBe("running");
    expect(c.connected).toBe(s.address);
    expect(changes).toEqual(['worker={"slots":2,"heartbeat_ms":1000}', 'worker/w-1={"slots":5}']);
    expect(c.get("worker")).toEqual({ slots: 2, heartbeat_ms: 1000 });
    expect(c.revision("worker")).toBe(w1.revision);
    expect(c.revision("worker/w-1")).toBe(o1.revision);
    // The effective worker config: "worker" shallow-merged with "worker/w-1".
    expect(c.merged()).toEqual({ slots: 5, heartbeat_ms: 1000 });
    expect(decodeConfig(WorkerConfigSchema, c.get("worker"), c.get("worker/w-1"))).toEqual({ slots: 5, heartbeatMs: 1000n });

    const at = Date.now();
    const w2 = await s.writer.putConfig({ namespace: "worker", value: { slots: 3, heartbeatMs: 500 } });
    await waitFor(() => changes.length === 3, { timeoutMs: 1000, what: "live change" });
    expect(Date.now() - at).toBeLessThan(1000);
    expect(changes[2]).toBe('worker={"slots":3,"heartbeatMs":500}');
    expect(c.revision("worker")).toBe(w2.revision);
    expect(decodeConfig(WorkerConfigSchema, c.get("worker"), c.get("worker/w-1"))).toEqual({ slots: 5, heartbeatMs: 500n });

    // Same value again: no change event, but the applied revision moves on.
    const w3 = await s.writer.putConfig({ namespace: "worker", value: { heartbeatMs: 500, slots: 3 } });
    await s.writer.putConfig({ namespace: "not-followed", value: { x: 1 } });
    await s.writer.deleteConfig({ namespace: "worker/w-1" });
    await waitFor(() => changes.length === 4, { what: "delete" });
    expect(changes[3]).toBe("worker/w-1=-");
    expect(c.get("worker/w-1")).toBeUndefined();
    expect(c.revision("worker")).toBe(w3.revision);
    const metrics = await registry.getSingleMetricAsString("taskmesh_config_applied_revision");
    expect(metrics).toContain(`taskmesh_config_applied_revision{namespace="worker"} ${w3.revision}`);
    expect(await registry.getSingleMetricAsString("taskmesh_config_client_connected")).toContain("taskmesh_config_client_connected 1");

    // The cache follows every change.
    await waitFor(async () => {
      const cached = JSON.parse(await readFile(cacheFile, "utf8")) as { namespaces: Record<string, { main?: { value: JsonObject } }> };
      return cached.namespaces.worker?.main?.value.slots === 3 && cached.namespaces["worker/w-1"]?.main === undefined;
    }, { what: "cache written" });
    await c.close();
    await c.close();
    expect(c.state).toBe("stopped");
    expect((await readdir(dir)).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  it("applies a gray release only where the instance's labels include all its labels", async () => {
    const s = await server();
    await s.writer.putConfig({ namespace: "worker", value: { slots: 2 } });
    const canary = configClient({ addresses: () => [s.address], namespaces: ["worker", "marker"], labels: { canary: "true", zone: "a" } });
    const plain = configClient({ addresses: () => [s.address], namespaces: ["worker", "marker"], labels: { zone: "a" } });
    const canaryChanges = record(canary);
    const plainChanges = record(plain);
    await Promise.all([canary.start(), plain.start()]);
    let mark = 0;
    /** A put both clients see: once it arrives, everything before it has been applied. */
    const barrier = async (): Promise<void> => {
      mark++;
      await s.writer.putConfig({ namespace: "marker", value: { mark } });
      const seen = `marker={"mark":${mark}}`;
      await waitFor(() => canaryChanges.includes(seen) && plainChanges.includes(seen), { what: `marker ${mark}` });
    };
    const worker = (xs: string[]): string[] => xs.filter((x) => x.startsWith("worker="));

    await s.writer.putConfig({ namespace: "worker", value: { slots: 4 }, grayLabels: { canary: "true" } });
    await barrier();
    expect(canary.get("worker")).toEqual({ slots: 4 });
    expect(plain.get("worker")).toEqual({ slots: 2 });

    // The document changes underneath: only the plain instance applies it.
    await s.writer.putConfig({ namespace: "worker", value: { slots: 3 } });
    await barrier();
    expect(canary.get("worker")).toEqual({ slots: 4 });
    expect(plain.get("worker")).toEqual({ slots: 3 });

    await s.writer.promoteGrayConfig({ namespace: "worker" });
    await barrier();
    expect(canary.get("worker")).toEqual({ slots: 4 });
    expect(plain.get("worker")).toEqual({ slots: 4 });

    // Labels that the canary lacks: nobody applies it.
    await s.writer.putConfig({ namespace: "worker", value: { slots: 9 }, grayLabels: { canary: "true", zone: "b" } });
    await barrier();
    await s.writer.putConfig({ namespace: "worker", value: { slots: 8 }, grayLabels: { canary: "true" } });
    await barrier();
    await s.writer.abandonGrayConfig({ namespace: "worker" });
    await barrier();
    expect(worker(canaryChanges)).toEqual(['worker={"slots":2}', 'worker={"slots":4}', 'worker={"slots":8}', 'worker={"slots":4}']);
    expect(worker(plainChanges)).toEqual(['worker={"slots":2}', 'worker={"slots":3}', 'worker={"slots":4}']);
  });

  it("reconnects to another instance and receives every change made while it was away, in order", async () => {
    const a = await server();
    const b = await server();
    let addresses = [a.address];
    const c = configClient({ addresses: () => addresses, namespaces: ["app"] });
    const changes = record(c);
    await a.writer.putConfig({ namespace: "app", value: { n: 0 } });
    await c.start();
    expect(changes).toEqual(['app={"n":0}']);

    await a.server.close();
    await waitFor(() => c.connected === undefined, { what: "disconnect noticed" });
    for (let n = 1; n <= 5; n++) await b.writer.putConfig({ namespace: "app", value: { n } });
    await b.writer.deleteConfig({ namespace: "app" });
    const last = await b.writer.putConfig({ namespace: "app", value: { n: 6 } });
    // While no instance is reachable it keeps its last configuration.
    expect(c.get("app")).toEqual({ n: 0 });

    addresses = [b.address];
    await waitFor(() => changes.length === 8, { what: "changes made meanwhile" });
    expect(changes).toEqual([
      'app={"n":0}',
      'app={"n":1}',
      'app={"n":2}',
      'app={"n":3}',
      'app={"n":4}',
      'app={"n":5}',
      "app=-",
      'app={"n":6}',
    ]);
    expect(c.connected).toBe(b.address);
    expect(c.revision("app")).toBe(last.revision);
  });

  it("reads everything again when its revision was compacted, emitting only what differs", async () => {
    // Compaction is global to an etcd: a private one.
    const backend: Backend = await startEtcd();
    cleanup.push(() => backend.stop());
    const own = new Etcd3({ hosts: backend.address });
    cleanup.push(() => own.close());
    const a = await server(own);
    const b = await server(own);
    let addresses = [a.address];
    const c = configClient({ addresses: () => addresses, namespaces: ["a", "b", "c", "d"] });
    const changes = record(c);
    for (const ns of ["a", "b", "c"]) await a.writer.putConfig({ namespace: ns, value: { v: 1 } });
    await c.start();
    expect(changes).toEqual(['a={"v":1}', 'b={"v":1}', 'c={"v":1}']);

    await a.server.close();
    await waitFor(() => c.connected === undefined, { what: "disconnect noticed" });
    await b.writer.putConfig({ namespace: "a", value: { v: 2 } });
    await b.writer.putConfig({ namespace: "a", value: { v: 3 } });
    await b.writer.deleteConfig({ namespace: "b" });
    await b.writer.putConfig({ namespace: "c", value: { v: 1 } }); // same value: no change
    const last = await b.writer.putConfig({ namespace: "d", value: { v: 1 } });
    await own.kv.compact({ revision: String(last.revision), physical: true });

    addresses = [b.address];
    await waitFor(() => changes.length === 6, { what: "re-sync" });
    // Only the end state: the intermediate a={"v":2} is gone with the compacted history.
    expect(changes.slice(3).sort()).toEqual(['a={"v":3}', "b=-", 'd={"v":1}']);
    expect(c.get("c")).toEqual({ v: 1 });
    // And it follows live again.
    await b.writer.putConfig({ namespace: "c", value: { v: 4 } });
    await waitFor(() => changes.length === 7, { what: "live after re-sync" });
    expect(changes[6]).toBe('c={"v":4}');
  });

  it("starts from its cache file when no config service can be reached, then catches up", async () => {
    const s = await server();
    const cacheFile = join(dir, "nested", "config.json");
    await s.writer.putConfig({ namespace: "worker", value: { slots: 7 } });
    await s.writer.putConfig({ namespace: "worker", value: { slots: 4 }, grayLabels: { canary: "true" } });
    const first = configClient({ addresses: () => [s.address], namespaces: ["worker"], cacheFile, labels: { canary: "true" } });
    await first.start();
    expect(first.get("worker")).toEqual({ slots: 4 });
    const rev = first.revision("worker");
    await first.close();

    const nowhere = `127.0.0.1:${await freePort()}`;
    let addresses = [nowhere];
    // Labels differ from the first instance's: the cached gray release does not apply here.
    const second = configClient({ addresses: () => addresses, namespaces: ["worker"], cacheFile, startTimeoutMs: 300 });
    const changes = record(second);
    const t0 = Date.now();
    await second.start();
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(second.connected).toBeUndefined();
    expect(second.get("worker")).toEqual({ slots: 7 });
    expect(changes).toEqual(['worker={"slots":7}']);
    expect(rev).toBeDefined();

    await s.writer.putConfig({ namespace: "worker", value: { slots: 9 } });
    addresses = [s.address];
    await waitFor(() => changes.length === 2, { what: "catch up" });
    expect(changes[1]).toBe('worker={"slots":9}');
  });

  it("survives a config service that stops answering (SIGSTOP) and follows it again once it resumes", async () => {
    // A real process, so that it can be frozen: its connection stays open but nothing answers,
    // and only the client's HTTP/2 pings notice. The failure must never escape as an unhandled
    // 'error' event (it killed every service that followed such a config service).
    const proc = await startService("config", uniquePrefix("frozen-config"), ["--etcd", inject("etcdEndpoint"), "--etcd-root", root]);
    cleanup.push(() => proc.kill());
    const writer = createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${proc.address}` }));
    await writer.putConfig({ namespace: "app", value: { n: 1 } });
    const c = configClient({ addresses: () => [proc.address], namespaces: ["app"], pingIntervalMs: 200, pingTimeoutMs: 200 });
    const changes = record(c);
    await c.start();
    expect(changes).toEqual(['app={"n":1}']);
    proc.child.kill("SIGSTOP");
    try {
      await waitFor(() => c.connected === undefined, { what: "the frozen stream dropped", timeoutMs: 5000 });
      // Reconnection attempts run into the frozen process too, and fail the same way.
      await waitFor(() => c.failures >= 3, { what: "three failed sessions", timeoutMs: 10_000 });
    } finally {
      proc.child.kill("SIGCONT");
    }
    await waitFor(() => c.connected === proc.address, { what: "following again", timeoutMs: 10_000 });
    await writer.putConfig({ namespace: "app", value: { n: 2 } });
    await waitFor(() => changes.length === 2, { what: "the change after resuming" });
    expect(changes).toEqual(['app={"n":1}', 'app={"n":2}']);
  });

  it("ignores an unreadable cache file and keeps going when a listener throws", async () => {
    const s = await server();
    const cacheFile = join(dir, "broken.json");
    await import("node:fs/promises").then((fs) => fs.writeFile(cacheFile, "{not json"));
    await s.writer.putConfig({ namespace: "n", value: { a: 1 } });
    const c = configClient({ addresses: () => [s.address], namespaces: ["n"], cacheFile });
    c.on("change", () => {
      throw new Error("listener bug");
    });
    const changes = record(c);
    await c.start();
    await s.writer.putConfig({ namespace: "n", value: { a: 2 } });
    await waitFor(() => changes.length === 2, { what: "changes" });
    expect(changes).toEqual(['n={"a":1}', 'n={"a":2}']);
  });
});
