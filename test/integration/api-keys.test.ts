import { createHash, randomBytes } from "node:crypto";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { silentLogger } from "../../lib/logger.js";
import { ApiKeyStore } from "../../services/gateway/api-keys.js";
import { uniquePrefix } from "../support/ids.js";
import { waitFor } from "../support/wait.js";

const randomKey = (): string => `tm_${randomBytes(8).toString("hex")}_${randomBytes(32).toString("base64url")}`;

describe("API keys: unknown ids cost etcd (almost) nothing", () => {
  let etcd: Etcd3;
  let prefix: string;
  const stores: ApiKeyStore[] = [];
  const store = async (opts: Partial<ConstructorParameters<typeof ApiKeyStore>[0]> = {}): Promise<ApiKeyStore> => {
    const s = new ApiKeyStore({ etcd, prefix, bootstrapKey: "", logger: silentLogger(), ...opts });
    await s.start();
    stores.push(s);
    return s;
  };

  beforeAll(() => {
    etcd = new Etcd3({ hosts: inject("etcdEndpoint") });
    prefix = `/${uniquePrefix("keys")}/apikeys/`;
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await etcd.delete().prefix(prefix).exec();
    etcd.close();
  });

  it("reads etcd at most a bounded number of times per second for ids nobody has, however many are guessed", async () => {
    const gw = await store({ lookupsPerSecond: 20 });
    const started = performance.now();
    for (let i = 0; i < 2000; i++) expect(await gw.authenticate(randomKey())).toBeUndefined();
    const seconds = (performance.now() - started) / 1000;
    // 20 at once, then 20 per second.
    expect(gw.lookupCount).toBeLessThanOrEqual(20 + Math.ceil(seconds * 20));
    // One unknown id asked many times, even at once: one read, then remembered.
    const fresh = await store({ lookupsPerSecond: 1000 });
    const guess = randomKey();
    await Promise.all(Array.from({ length: 50 }, () => fresh.authenticate(guess)));
    for (let i = 0; i < 50; i++) await fresh.authenticate(guess);
    expect(fresh.lookupCount).toBe(1);
  });

  it("accepts a key created through another gateway at once, and one the watch shows after it was remembered as unknown", async () => {
    const a = await store();
    const b = await store();
    const { secret, record } = await b.create("acme", ["tasks:read"], "made elsewhere");
    expect((await a.authenticate(secret))?.tenant).toBe("acme");
    expect((await a.authenticate(secret.slice(0, -1) + (secret.endsWith("A") ? "B" : "A")))).toBeUndefined();
    // An id first seen unknown, then written: the watch makes it known, the memory does not hide it.
    const id = randomBytes(8).toString("hex");
    const part = randomBytes(32).toString("base64url");
    const key = `tm_${id}_${part}`;
    expect(await a.authenticate(key)).toBeUndefined();
    const hash = createHash("sha256").update(part).digest("hex");
    await etcd.put(prefix + id).value(JSON.stringify({ tenant: "beta", scopes: ["tasks:write"], description: "", created: new Date().toISOString(), hash })).exec();
    await waitFor(async () => (await a.authenticate(key))?.tenant === "beta", { what: "the key the watch showed accepted" });
    // Revoked keys stop working through every gateway.
    await b.revoke(record.id);
    await waitFor(async () => (await a.authenticate(secret)) === undefined, { what: "the revoked key refused" });
  });
});
