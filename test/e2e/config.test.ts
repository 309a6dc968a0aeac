import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Etcd3 } from "etcd3";
import { afterEach, describe, expect, inject, it } from "vitest";
import { ConfigService } from "../../gen/taskmesh/v1/config_service_pb.js";
import { ConfigClient, configServiceAddresses } from "../../lib/config-client.js";
import { etcdKeys, parseServiceRecord } from "../../lib/keys.js";
import { silentLogger } from "../../lib/logger.js";
import { Membership } from "../../lib/membership.js";
import { uniquePrefix } from "../support/ids.js";
import { startService, type ServiceProcess } from "../support/mesh.js";
import { waitFor } from "../support/wait.js";

function writer(address: string): Client<typeof ConfigService> {
  return createClient(ConfigService, createGrpcTransport({ baseUrl: `http://${address}` }));
}

describe("config service processes", () => {
  const cleanup: (() => Promise<unknown> | unknown)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function configProcess(name: string, root: string, port?: number): Promise<ServiceProcess> {
    const p = await startService("config", name, ["--etcd", inject("etcdEndpoint"), "--etcd-root", root], {
      ...(port !== undefined ? { port } : {}),
    });
    cleanup.push(() => p.stop());
    return p;
  }

  it("a client keeps its last config while its config service is killed, then gets every change made meanwhile, in order", async () => {
    const root = `/${uniquePrefix("cfge2e")}/`;
    const etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    cleanup.push(async () => {
      await etcd.delete().prefix(root).exec();
      etcd.close();
    });
    const dir = await mkdtemp(join(tmpdir(), "taskmesh-config-e2e-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));

    const a = await configProcess("config-a", root);
    const b = await configProcess("config-b", root);
    await writer(a.address).putConfig({ namespace: "worker", value: { slots: 1 } });

    // One client bound to instance A only; one that finds instances through etcd.
    const pinned = new ConfigClient({
      addresses: () => [a.address],
      namespaces: ["worker"],
      cacheFile: join(dir, "pinned.json"),
      logger: silentLogger(),
      backoffMaxMs: 500,
    });
    cleanup.push(() => pinned.close());
    const members = new Membership({
      client: etcd,
      prefix: etcdKeys(root).services("config"),
      parse: parseServiceRecord,
      logger: silentLogger(),
    });
    await members.start();
    cleanup.push(() => members.close());
    expect(members.size).toBe(2);
    const discovering = new ConfigClient({
      addresses: configServiceAddresses(members, [a.address]),
      namespaces: ["worker"],
      logger: silentLogger(),
      backoffMaxMs: 500,
    });
    cleanup.push(() => discovering.close());
    const seen = { pinned: [] as string[], discovering: [] as string[] };
    const show = (v: JsonObject | undefined): string => (v === undefined ? "-" : JSON.stringify(v));
    pinned.on("change", (_ns, v) => seen.pinned.push(show(v)));
    discovering.on("change", (_ns, v) => seen.discovering.push(show(v)));
    await Promise.all([pinned.start(), discovering.start()]);
    expect(pinned.connected).toBe(a.address);
    expect(seen.pinned).toEqual(['{"slots":1}']);

    await a.kill();
    await waitFor(() => pinned.connected === undefined, { what: "pinned client notices the kill" });
    const w = writer(b.address);
    const expected = ['{"slots":1}'];
    for (let slots = 2; slots <= 6; slots++) {
      await w.putConfig({ namespace: "worker", value: { slots } });
      expected.push(`{"slots":${slots}}`);
    }
    await w.deleteConfig({ namespace: "worker" });
    expected.push("-");
    await w.putConfig({ namespace: "worker", value: { slots: 7, heartbeat_ms: 500 } });
    expected.push('{"slots":7,"heartbeat_ms":500}');

    // The discovering client moved to B and saw everything live.
    await waitFor(() => seen.discovering.length === expected.length, { what: "discovering client follows B" });
    expect(seen.discovering).toEqual(expected);
    // The pinned one still runs on its last configuration.
    expect(pinned.get("worker")).toEqual({ slots: 1 });
    expect(seen.pinned).toEqual(['{"slots":1}']);

    const restarted = await configProcess("config-a2", root, a.port);
    await waitFor(() => seen.pinned.length === expected.length, { timeoutMs: 15_000, what: "pinned client catches up" });
    expect(seen.pinned).toEqual(expected);
    expect(pinned.connected).toBe(restarted.address);
    await pinned.close();
    const cached = JSON.parse(await readFile(join(dir, "pinned.json"), "utf8")) as {
      namespaces: { worker?: { main?: { value: JsonObject } } };
    };
    expect(cached.namespaces.worker?.main?.value).toEqual({ slots: 7, heartbeat_ms: 500 });
  });

  it("refuses invalid documents of each kind for each schema and leaves the stored config unchanged", async () => {
    const root = `/${uniquePrefix("cfge2e")}/`;
    const p = await configProcess("config", root);
    const etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    cleanup.push(async () => {
      await etcd.delete().prefix(root).exec();
      etcd.close();
    });
    const c = writer(p.address);
    const cases: { namespace: string; valid: JsonObject; invalid: [JsonObject, string][] }[] = [
      {
        namespace: "gateway",
        valid: { rate_limit_per_second: 50, rate_limit_burst: 100, max_request_bytes: 1_048_576 },
        invalid: [
          [{ rate_limit_per_second: 50, bogus: 1 }, "value.bogus: unknown field"],
          [{ rate_limit_burst: "lots" }, "value.rate_limit_burst: must be an integer"],
          [{ max_request_bytes: 512 }, "value.max_request_bytes: must be between 1024 and 67108864"],
        ],
      },
      {
        namespace: "scheduler",
        valid: { default_max_attempts: 3, task_lease_ms: 30_000, default_backoff_jitter: 0.2 },
        invalid: [
          [{ taskLease: 1 }, "value.taskLease: unknown field"],
          [{ default_backoff_jitter: "some" }, "value.default_backoff_jitter: must be a number"],
          [{ default_backoff_jitter: 2 }, "value.default_backoff_jitter: must be between 0 and 1"],
        ],
      },
      {
        namespace: "worker",
        valid: { slots: 4, httpAllowedHosts: ["127.0.0.1"] },
        invalid: [
          [{ slots: 4, bogus: true }, "value.bogus: unknown field"],
          [{ http_allowed_hosts: "127.0.0.1" }, "value.http_allowed_hosts: must be a list of strings"],
          [{ slots: 0 }, "value.slots: must be between 1 and 10000"],
        ],
      },
      {
        namespace: "worker/w-1",
        valid: { slots: 8 },
        invalid: [
          [{ slot: 8 }, "value.slot: unknown field"],
          [{ heartbeat_ms: [1] }, "value.heartbeat_ms: must be an integer"],
          [{ heartbeat_ms: 10 }, "value.heartbeat_ms: must be between 100 and 60000"],
        ],
      },
    ];
    for (const { namespace, valid, invalid } of cases) {
      const stored = await c.putConfig({ namespace, value: valid });
      for (const [value, message] of invalid) {
        const err = await c.putConfig({ namespace, value }).then(
          () => undefined,
          (e: unknown) => ConnectError.from(e),
        );
        expect(err?.code, `${namespace} ${JSON.stringify(value)}`).toBe(Code.InvalidArgument);
        expect(err?.rawMessage).toBe(message);
      }
      const now = await c.getConfig({ namespace });
      expect(now.revision).toBe(stored.revision);
      expect(now.value).toEqual(valid);
      expect((await c.getConfigHistory({ namespace })).entries).toHaveLength(1);
    }
  });
});
