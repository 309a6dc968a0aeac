import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Etcd3 } from "etcd3";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import { silentLogger } from "../../lib/logger.js";
import { Membership } from "../../lib/membership.js";
import { Registration } from "../../lib/registration.js";
import { uniquePrefix } from "../support/ids.js";
import { freePort } from "../support/ports.js";
import { waitFor } from "../support/wait.js";

const FIXTURE = fileURLToPath(new URL("../fixtures/register-and-hang.ts", import.meta.url));
const REPO = fileURLToPath(new URL("../..", import.meta.url));

describe("Registration", () => {
  let client: Etcd3;
  let prefix: string;
  const cleanup: (() => Promise<void> | void)[] = [];

  beforeEach(() => {
    client = new Etcd3({ hosts: inject("etcdEndpoint") });
    prefix = `/${uniquePrefix("reg")}/`;
  });

  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
    await client.delete().prefix(prefix);
    client.close();
  });

  async function register(key: string, value: () => object, ttlSeconds = 5): Promise<Registration> {
    const r = await Registration.create({ client, key, value, ttlSeconds, logger: silentLogger() });
    cleanup.push(() => r.close());
    return r;
  }

  it("puts the key under a lease and close() removes it at once", async () => {
    const key = `${prefix}w1`;
    const r = await register(key, () => ({ address: "127.0.0.1:1", slots: 4 }));
    expect(JSON.parse((await client.get(key).string()) as string)).toEqual({ address: "127.0.0.1:1", slots: 4 });
    const kv = await client.get(key).exec();
    expect(kv.kvs[0]?.lease).toBe(await r.leaseId());

    await r.close();
    expect(await client.get(key).string()).toBeNull();
    await r.close(); // twice is fine
    await r.update(); // and a no-op once closed
    expect(await client.get(key).string()).toBeNull();
  });

  it("rewrites the value under the same lease on update()", async () => {
    const key = `${prefix}w1`;
    let slots = 1;
    const r = await register(key, () => ({ slots }));
    const lease = await r.leaseId();
    slots = 7;
    await r.update();
    expect(JSON.parse((await client.get(key).string()) as string)).toEqual({ slots: 7 });
    expect((await client.get(key).exec()).kvs[0]?.lease).toBe(lease);
  });

  it("disappears within TTL + 1 s when its process is killed, and Membership sees the delete", async () => {
    const id = "w-killed";
    const key = `${prefix}${id}`;
    const membership = new Membership({
      client,
      prefix,
      parse: (_id, v) => JSON.parse(v) as { pid: number },
      logger: silentLogger(),
    });
    cleanup.push(() => membership.close());
    const deletedAt: number[] = [];
    membership.on("delete", (deleted) => {
      if (deleted === id) deletedAt.push(Date.now());
    });
    await membership.start();

    const child = spawn(process.execPath, ["--import", "tsx", FIXTURE, inject("etcdEndpoint"), key, "2"], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanup.push(() => killed(child));
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (out += b.toString()));
    await waitFor(() => out.includes("registered"), { timeoutMs: 20_000, what: `fixture to register (${out})` });
    const member = await waitFor(() => membership.get(id), { what: "membership to see the child" });
    expect(member.pid).toBe(child.pid);

    const killedAt = Date.now();
    await killed(child);
    await waitFor(() => deletedAt.length > 0, { timeoutMs: 5_000, what: "delete event" });
    expect(deletedAt[0] as number).toBeLessThanOrEqual(killedAt + 3_000);
    expect(await client.get(key).string()).toBeNull();
    expect(membership.get(id)).toBeUndefined();
  });

  it("registers again under a fresh lease when its lease is revoked behind its back", async () => {
    const key = `${prefix}w1`;
    let version = 1;
    const r = await register(key, () => ({ version }), 3);
    const first = (await r.leaseId()) as string;
    version = 2;
    await client.leaseClient.leaseRevoke({ ID: first });

    const second = await waitFor(
      async () => {
        const kv = (await client.get(key).exec()).kvs[0];
        return kv !== undefined && kv.lease !== first ? kv : undefined;
      },
      { what: "re-registration" },
    );
    expect(JSON.parse(second.value.toString())).toEqual({ version: 2 });
    // The key can be read back a moment before the put's own reply reaches the registration.
    await waitFor(async () => (await r.leaseId()) === second.lease, { what: "registration to adopt the lease" });
    version = 3;
    await r.update();
    expect(JSON.parse((await client.get(key).string()) as string)).toEqual({ version: 3 });
    await r.close();
    expect(await client.get(key).string()).toBeNull();
  });

  it("rejects create() when etcd cannot be reached", async () => {
    const nowhere = new Etcd3({ hosts: `127.0.0.1:${await freePort()}` });
    try {
      await expect(
        Registration.create({
          client: nowhere,
          key: `${prefix}w1`,
          value: () => ({}),
          ttlSeconds: 2,
          logger: silentLogger(),
        }),
      ).rejects.toThrow();
    } finally {
      nowhere.close();
    }
  });
});

/** SIGKILLs a child and waits for it to be gone. */
async function killed(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await gone;
}
