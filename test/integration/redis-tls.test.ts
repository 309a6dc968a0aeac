import { readFileSync } from "node:fs";
import type { TLSSocket } from "node:tls";
import { inspect } from "node:util";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_REDIS_COMMAND_TIMEOUT_MS, FailoverAwareSentinelConnector, createRedis, type RedisClientOptions, type RedisTls } from "../../lib/redis.js";
import { uniquePrefix } from "../support/ids.js";
import {
  REDIS_LOGIN,
  SENTINEL_LOGIN,
  makeRedisCerts,
  removeRedisCerts,
  secureCommand,
  startSecureRedis,
  startSecureSentinelGroup,
  type RedisCerts,
  type SecureSentinelGroup,
  type SecureServer,
} from "../support/redis-secure.js";
import { waitFor } from "../support/wait.js";

const enc = encodeURIComponent;
const WRONG_PASSWORD = "Wr0ng-Pa55/word";

/** `rediss://taskmesh:<password>@127.0.0.1:<port>`, the password percent-encoded. */
function url(port: number, password = REDIS_LOGIN.password): string {
  return `rediss://${REDIS_LOGIN.username}:${enc(password)}@127.0.0.1:${port}`;
}

/** Every form in which `secret` could show up in a log line. */
function leaks(text: string, secret: string): boolean {
  return [secret, enc(secret), JSON.stringify(secret)].some((s) => text.includes(s));
}

/** The rejection of `p` and how long it took (fails the test if `p` resolves). */
async function rejection(p: Promise<unknown>): Promise<{ err: Error; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (err) {
    return { err: err as Error, ms: Date.now() - t0 };
  }
  throw new Error("expected a rejection");
}

/** `code` and `message` of an error emitted by a client, for matching. */
function describeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  return `${String(e.code)} ${String(e.message)}`;
}

describe("Redis over TLS with ACL users (lib/redis.ts)", () => {
  let certs: RedisCerts | undefined;
  /** `tls-auth-clients yes`: a client certificate of the CA is required. */
  let strict: SecureServer | undefined;
  /** `tls-auth-clients no`: server verification only. */
  let lenient: SecureServer | undefined;
  let group: SecureSentinelGroup | undefined;
  const clients: { redis: Redis; errors: unknown[] }[] = [];

  /** A client from createRedis that records the errors it emits. */
  const client = (u: string, tls: RedisTls | undefined, overrides: RedisClientOptions = {}): { redis: Redis; errors: unknown[] } => {
    const redis = createRedis(u, overrides, tls);
    const c = { redis, errors: [] as unknown[] };
    redis.on("error", (err: unknown) => c.errors.push(err));
    clients.push(c);
    return c;
  };
  /** The certificates (made in beforeAll). */
  const cert = (): RedisCerts => {
    if (certs === undefined) throw new Error("no certificates");
    return certs;
  };
  /** The TLS port of a server started in beforeAll. */
  const portOf = (server: SecureServer | undefined): number => {
    if (server === undefined) throw new Error("server not started");
    return server.port;
  };
  /** The Sentinel group (started in its describe's beforeAll). */
  const theGroup = (): SecureSentinelGroup => {
    if (group === undefined) throw new Error("no Sentinel group");
    return group;
  };
  /** The test CA and client certificate. */
  const full = (): RedisTls => ({ ca: cert().ca, cert: cert().client.cert, key: cert().client.key });

  beforeAll(async () => {
    certs = await makeRedisCerts();
    [strict, lenient] = await Promise.all([
      startSecureRedis({ certs, authClients: true }),
      startSecureRedis({ certs, authClients: false }),
    ]);
  });

  afterEach(() => {
    for (const c of clients.splice(0)) c.redis.disconnect();
  });

  afterAll(async () => {
    for (const c of clients.splice(0)) c.redis.disconnect();
    await Promise.all([strict?.stop(), lenient?.stop(), group?.stop()]);
    await removeRedisCerts(certs);
  });

  /** Publishes on `channel` through `pub` until `sub` gets a message. */
  async function messagesFlow(pub: Redis, sub: Redis, channel: string): Promise<void> {
    let got = 0;
    const onMessage = (ch: string): void => {
      if (ch === channel) got++;
    };
    sub.on("message", onMessage);
    try {
      await waitFor(
        async () => {
          await pub.publish(channel, "ping").catch(() => undefined);
          return got > 0;
        },
        { timeoutMs: 20_000, intervalMs: 50, what: `a message on ${channel}` },
      );
    } finally {
      sub.off("message", onMessage);
    }
  }

  it("rediss:// with the CA and a client certificate: SET/GET, EVAL and pub/sub as the ACL user, on TLS", async () => {
    const { redis } = client(url(portOf(strict)), full());
    const key = uniquePrefix("k");
    expect(await redis.set(key, "v1")).toBe("OK");
    expect(await redis.get(key)).toBe("v1");
    expect(await redis.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, `${key}:n`, 5)).toBe(5);
    expect(await redis.call("ACL", "WHOAMI")).toBe(REDIS_LOGIN.username);
    const stream = redis.stream as TLSSocket;
    expect(stream.encrypted).toBe(true);
    expect(stream.authorized).toBe(true);
    expect(stream.getPeerCertificate().subject.CN).toBe("redis-server");

    const sub = redis.duplicate();
    sub.on("error", () => undefined);
    clients.push({ redis: sub, errors: [] });
    const channel = uniquePrefix("ch");
    await sub.subscribe(channel);
    await messagesFlow(redis, sub, channel);
  });

  it("rediss:// with the CA alone, against a server that does not ask for a client certificate", async () => {
    const { redis } = client(url(portOf(lenient)), { ca: cert().ca });
    expect(await redis.ping()).toBe("PONG");
    expect(await redis.call("ACL", "WHOAMI")).toBe(REDIS_LOGIN.username);
  });

  it("without the CA (Node's default trust store) or with another CA: a certificate error, within the command bounds", async () => {
    for (const tls of [undefined, { ca: cert().stranger.ca }]) {
      const { redis, errors } = client(url(portOf(lenient)), tls);
      const { err, ms } = await rejection(redis.ping());
      expect(err.name).toBe("MaxRetriesPerRequestError");
      expect(ms).toBeLessThan(DEFAULT_REDIS_COMMAND_TIMEOUT_MS + 1000);
      // What the client reports (and a service logs) is the certificate problem itself.
      expect(errors.length).toBeGreaterThan(0);
      for (const e of errors) {
        expect(describeError(e)).toMatch(/^(SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|UNABLE_TO_VERIFY_LEAF_SIGNATURE) /);
      }
      expect(redis.status).not.toBe("ready");
    }
  });

  it("without a client certificate, or with one of another CA, a server that requires one refuses the connection", async () => {
    const stranger = { ca: cert().ca, cert: cert().stranger.cert, key: cert().stranger.key };
    for (const [tls, alert] of [
      [{ ca: cert().ca }, /ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED/],
      [stranger, /ERR_SSL_TLSV1_ALERT_UNKNOWN_CA/],
    ] as const) {
      const { redis, errors } = client(url(portOf(strict)), tls);
      const { err, ms } = await rejection(redis.ping());
      expect(err.message).toMatch(/max retries per request|Connection is closed|ECONNRESET|alert/i);
      expect(ms).toBeLessThan(DEFAULT_REDIS_COMMAND_TIMEOUT_MS + 1000);
      // TLS 1.3: the server's verdict arrives after the client's handshake completed, as an alert
      // (or as a reset, when the client was still writing): the client keeps retrying, and reports
      // the alert.
      await waitFor(() => errors.some((e) => alert.test(describeError(e))), { what: `${alert.source} reported` });
      for (const e of errors) expect(describeError(e)).toMatch(/ERR_SSL_TLSV1\d?_ALERT|ECONNRESET|EPIPE/);
      expect(redis.status).not.toBe("ready");
    }
  });

  it("a wrong ACL password: WRONGPASS at once, and neither the error nor its properties carry the password", async () => {
    const { redis, errors } = client(url(portOf(strict), WRONG_PASSWORD), full());
    const { err, ms } = await rejection(redis.get("k"));
    expect(err.message).toBe("WRONGPASS invalid username-password pair or user is disabled.");
    expect(ms).toBeLessThan(DEFAULT_REDIS_COMMAND_TIMEOUT_MS);
    const sub = redis.duplicate();
    const subErrors: unknown[] = [];
    sub.on("error", (e: unknown) => subErrors.push(e));
    clients.push({ redis: sub, errors: subErrors });
    await waitFor(() => errors.length > 0 && subErrors.length > 0, { what: "the login errors reported" });
    for (const e of [err, ...errors, ...subErrors]) {
      expect(describeError(e)).toMatch(/WRONGPASS/);
      // As a logger would write it (every property, the cause chain).
      const text = `${inspect(e, { depth: 10 })}\n${JSON.stringify(e)}`;
      expect(leaks(text, WRONG_PASSWORD)).toBe(false);
    }

    // Control: a bare ioredis client puts the password into the same error.
    const bare = new Redis(url(portOf(strict), WRONG_PASSWORD), {
      tls: { ca: readFileSync(cert().ca), cert: readFileSync(cert().client.cert), key: readFileSync(cert().client.key) },
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
    });
    bare.on("error", () => undefined);
    try {
      const { err: bareErr } = await rejection(bare.get("k"));
      expect(leaks(inspect(bareErr, { depth: 10 }), WRONG_PASSWORD)).toBe(true);
    } finally {
      bare.disconnect();
    }
  });

  describe("Sentinel over TLS: rediss-sentinel://", () => {
    beforeAll(async () => {
      group = await startSecureSentinelGroup({ certs: cert(), replicas: 1, sentinels: 3 });
    }, 60_000);

    it("connects through TLS Sentinels with ACL users, watches them over TLS and follows SENTINEL FAILOVER", async () => {
      const g = theGroup();
      const { redis } = client(g.url, full(), { enableAutoPipelining: false });
      expect(redis.options.Connector).toBe(FailoverAwareSentinelConnector);
      const key = uniquePrefix("k");
      expect(await redis.set(key, "before")).toBe("OK");
      expect(await redis.get(key)).toBe("before");
      expect(await redis.call("ACL", "WHOAMI")).toBe(REDIS_LOGIN.username);
      const oldMaster = await g.waitHealthy();
      const stream = (): TLSSocket => redis.stream as TLSSocket;
      expect(stream().encrypted).toBe(true);
      expect(stream().remotePort).toBe(oldMaster);

      const sub = redis.duplicate();
      sub.on("error", () => undefined);
      clients.push({ redis: sub, errors: [] });
      const channel = uniquePrefix("ch");
      await sub.subscribe(channel);
      await messagesFlow(redis, sub, channel);

      // The failover watch (+switch-master) is subscribed on every Sentinel, over TLS, as the
      // Sentinels' ACL user.
      for (const s of g.sentinels) {
        await waitFor(
          async () => {
            const list = String(await secureCommand(s.port, cert(), SENTINEL_LOGIN, "CLIENT", "LIST"));
            return list.split("\n").some((l) => / sub=1 /.test(l) && l.includes(` user=${SENTINEL_LOGIN.username} `));
          },
          { timeoutMs: 10_000, intervalMs: 50, what: `the +switch-master watch on Sentinel ${s.port}` },
        );
      }

      expect(await secureCommand(g.sentinels[0]!.port, cert(), SENTINEL_LOGIN, "SENTINEL", "FAILOVER", g.masterName)).toBe("OK");
      const newMaster = await g.waitHealthy({ notPort: oldMaster, timeoutMs: 40_000 });
      expect(newMaster).not.toBe(oldMaster);
      await waitFor(() => stream().remotePort === newMaster, { timeoutMs: 15_000, what: "the client on the new master" });
      expect(stream().encrypted).toBe(true);
      expect(await redis.call("ROLE").then((r) => (r as unknown[])[0])).toBe("master");
      expect(await redis.get(key)).toBe("before");
      expect(await redis.set(key, "after")).toBe("OK");
      expect(await secureCommand(newMaster, cert(), REDIS_LOGIN, "GET", key)).toBe("after");
      await messagesFlow(redis, sub, channel);
    }, 90_000);

    it("a wrong Sentinel password fails with the Sentinels' WRONGPASS, without the password", async () => {
      const g = theGroup();
      const wrong = g.url.replace(`sentinelPassword=${enc(SENTINEL_LOGIN.password)}`, `sentinelPassword=${enc(WRONG_PASSWORD)}`);
      expect(wrong).not.toBe(g.url);
      const { redis, errors } = client(wrong, full(), { commandTimeout: 1000 });
      const { err } = await rejection(redis.ping());
      expect(err.message).toBe("Command timed out");
      await waitFor(() => errors.some((e) => /All sentinels are unreachable.*WRONGPASS/.test(describeError(e))), {
        what: "the Sentinels' refusal reported",
      });
      for (const e of errors) expect(leaks(`${inspect(e, { depth: 10 })}\n${JSON.stringify(e)}`, WRONG_PASSWORD)).toBe(false);
    });
  });
});
