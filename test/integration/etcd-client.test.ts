import { Etcd3 } from "etcd3";
import { ConnectionPool } from "etcd3/lib/connection-pool.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEtcd, type EtcdClient } from "../../lib/etcd.js";
import { silentLogger } from "../../lib/logger.js";
import { Membership } from "../../lib/membership.js";
import { startEtcdCluster, type EtcdCluster } from "../support/etcd-cluster.js";
import { uniquePrefix } from "../support/ids.js";
import { waitFor } from "../support/wait.js";

describe("etcd client on a 3-member cluster", () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
    // Every call and stream goes to the LAST endpoint first, so the test knows which member
    // carries them (a static switch of etcd3's pool, for tests).
    ConnectionPool.deterministicOrder = true;
  }, 60_000);
  afterAll(async () => {
    ConnectionPool.deterministicOrder = false;
    await cluster?.stop();
  });

  it("moves leases, watches and calls off a member that stops answering, and uses it again once it answers", async () => {
    const root = `/${uniquePrefix("etcdc")}/`;
    const client: EtcdClient = createEtcd({ endpoints: cluster.endpoints, logger: silentLogger() });
    const other = new Etcd3({ hosts: cluster.endpoints[0] as string });
    const frozen = cluster.members[2];
    if (frozen === undefined) throw new Error("no third member");
    const members = new Membership<string>({ client, prefix: `${root}m/`, parse: (_id, v) => v, logger: silentLogger() });
    try {
      const lease = client.lease(2);
      let lost = false;
      lease.on("lost", () => {
        lost = true;
      });
      await lease.put(`${root}leased`).value("alive").exec();
      await members.start();
      await waitFor(() => (client.memberStreams().get(frozen.endpoint) ?? 0) >= 2, { what: "the lease keepalive and the watch on the last member" });

      frozen.process.kill("SIGSTOP");
      const frozenAt = Date.now();
      try {
        // A call sent to the frozen member now (it is not known yet) is moved once it is.
        const hanging = client.get(`${root}leased`).string().then(() => Date.now() - frozenAt);
        await waitFor(() => client.memberHealth().get(frozen.endpoint) === false, { timeoutMs: 3000, what: "the frozen member found" });
        const detectedMs = Date.now() - frozenAt;
        expect(detectedMs).toBeLessThan(1800);
        // Soon after, well before its 5 s deadline.
        expect(await hanging).toBeLessThan(3500);
        // Calls skip it now.
        const t = Date.now();
        await client.get(`${root}leased`).string();
        expect(Date.now() - t).toBeLessThan(1000);
        // The watch moved: a change made now arrives.
        await other.put(`${root}m/a`).value("1").exec();
        await waitFor(() => members.get("a") === "1", { timeoutMs: 3000, what: "the watch after the move" });
        // The lease outlives three of its TTLs with the member frozen: its keepalives moved.
        await waitFor(
          async () => {
            expect(lost).toBe(false);
            expect(await other.get(`${root}leased`).string()).toBe("alive");
            return Date.now() - frozenAt > 6000;
          },
          { timeoutMs: 12_000, intervalMs: 250, what: "three lease TTLs" },
        );
        expect(client.memberStreams().get(frozen.endpoint)).toBe(0);
      } finally {
        frozen.process.kill("SIGCONT");
      }
      await waitFor(() => client.memberHealth().get(frozen.endpoint) === true, { timeoutMs: 5000, what: "the member answers again" });
      expect(lost).toBe(false);
      await lease.revoke();
    } finally {
      await members.close();
      await other.delete().prefix(root).exec();
      other.close();
      client.close();
    }
  });
});
