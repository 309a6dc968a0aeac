import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  FailoverAwareSentinelConnector,
  REDIS_URL_HELP,
  createRedis,
  parseRedisUrl,
  redactRedisUrl,
  redisClientOptions,
  redisReconnectDelay,
  redisTlsFrom,
  redisTlsSettings,
  redisUrlSetting,
} from "../../lib/redis.js";
import { readSettings } from "../../lib/settings.js";

/** The message of what `f` throws ("" if it does not). */
function thrown(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    return (err as Error).message;
  }
  return "";
}

describe("parseRedisUrl: one server", () => {
  it("reads redis:// with defaults, credentials and a database", () => {
    expect(parseRedisUrl("redis://127.0.0.1:6379")).toEqual({
      kind: "standalone",
      url: "redis://127.0.0.1:6379",
      host: "127.0.0.1",
      port: 6379,
      db: 0,
      tls: false,
    });
    expect(parseRedisUrl("redis://redis.internal")).toMatchObject({ host: "redis.internal", port: 6379, db: 0 });
    expect(parseRedisUrl("redis://app:s3cret@10.0.0.5:6380/3")).toMatchObject({ host: "10.0.0.5", port: 6380, db: 3 });
    expect(parseRedisUrl("rediss://:pw@cache.example.com:6390/")).toMatchObject({ port: 6390, db: 0, tls: true });
    expect(parseRedisUrl("  redis://h:1/2  ")).toMatchObject({ url: "redis://h:1/2", db: 2 });
  });

  it.each([
    ["", /expected redis:\/\/\[user:password@\]host\[:port\]\[\/db\]/],
    ["127.0.0.1:6379", /expected redis:\/\//],
    ["http://127.0.0.1:6379", /expected redis:\/\/.*got "http:\/\/127.0.0.1:6379"/],
    ["redis://", /no host/],
    ["redis://h:99999", /not a valid URL/],
    ["redis://h:port", /not a valid URL/],
    ["redis://h:0", /port 0/],
    ["redis://h/x", /path: the database must be a non-negative integer, got "x"/],
    ["redis://h/-1", /non-negative integer/],
    ["redis://h/1/2", /the path must be the database number alone/],
    ["redis://h/1#frag", /unexpected #fragment/],
  ])("refuses %j", (raw, message) => {
    expect(() => parseRedisUrl(raw)).toThrow(message);
  });

  it("never echoes a password in its messages", () => {
    let message = "";
    try {
      parseRedisUrl("http://user:topsecret@h:1");
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/got "http:\/\/\*\*\*@h:1"/);
    expect(message).not.toContain("topsecret");
    expect(() => parseRedisUrl("redis://u:topsecret@h:1/x/y")).toThrow(/^(?!.*topsecret)/);
    expect(() => parseRedisUrl("u:topsecret@h:6379")).toThrow(/got "\*\*\*@h:6379"$/);
  });
});

describe("parseRedisUrl: Sentinel", () => {
  it("reads the Sentinel list, the master name, the database and both sets of credentials", () => {
    expect(
      parseRedisUrl(
        "redis-sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2:26380,sentinel-3/mymaster?db=2&sentinelPassword=s%26p&sentinelUsername=sent",
      ),
    ).toEqual({
      kind: "sentinel",
      sentinels: [
        { host: "10.0.0.1", port: 26379 },
        { host: "10.0.0.2", port: 26380 },
        { host: "sentinel-3", port: 26379 },
      ],
      name: "mymaster",
      db: 2,
      username: "app",
      password: "p@ss",
      sentinelUsername: "sent",
      sentinelPassword: "s&p",
      tls: false,
    });
  });

  it("takes a password alone, IPv6 literals, underscores and one Sentinel", () => {
    expect(parseRedisUrl("redis-sentinel://:pw@[::1]:26379,[fd00::2]/m")).toEqual({
      kind: "sentinel",
      sentinels: [
        { host: "::1", port: 26379 },
        { host: "fd00::2", port: 26379 },
      ],
      name: "m",
      db: 0,
      tls: false,
      password: "pw",
    });
    expect(parseRedisUrl("REDIS-SENTINEL://redis_sentinel_1/my%20master")).toMatchObject({
      sentinels: [{ host: "redis_sentinel_1", port: 26379 }],
      name: "my master",
    });
  });

  it.each([
    ["redis-sentinel://", /no Sentinel address/],
    ["redis-sentinel:///mymaster", /no Sentinel address/],
    ["redis-sentinel://h1:26379", /no master name: write redis-sentinel:\/\/h1:26379\/<masterName>/],
    ["redis-sentinel://h1:26379/", /no master name/],
    ["redis-sentinel://h1,,h2/m", /empty Sentinel address in the list "h1,,h2"/],
    ["redis-sentinel://h1,/m", /empty Sentinel address/],
    ["redis-sentinel://h1:0/m", /bad Sentinel port "0" in "h1:0"/],
    ["redis-sentinel://h1:70000/m", /bad Sentinel port "70000"/],
    ["redis-sentinel://h1:x/m", /bad Sentinel port "x"/],
    ["redis-sentinel://h1:1:2/m", /bad Sentinel port "1:2"/],
    ["redis-sentinel://::1/m", /bad Sentinel host ""/],
    ["redis-sentinel://h%20x/m", /bad Sentinel host "h%20x"/],
    ["redis-sentinel://h1/m/2", /the path must be the master name alone, got "m\/2" \(the database goes in \?db=N\)/],
    ["redis-sentinel://h1/m?db=x", /db: the database must be a non-negative integer, got "x"/],
    ["redis-sentinel://h1/m?db=1&db=2", /parameter "db" is given twice/],
    ["redis-sentinel://h1/m?timeout=5", /unknown parameter "timeout" \(known: db, sentinelUsername, sentinelPassword\)/],
    ["redis-sentinel://h1:26379/0#mymaster", /the master name goes in the path/],
    ["redis-sentinel://u:%E0%A4%A@h1/m", /bad percent-encoding in the password/],
    ["redis+sentinel://h1/m", /"redis\+sentinel:\/\/" is not supported/],
    ["rediss+sentinel://h1/m", /"rediss\+sentinel:\/\/" is not supported/],
    ["sentinel://h1/m", /"sentinel:\/\/" is not supported.*rediss-sentinel:\/\//],
    ["rediss-sentinel://h1:26379", /no master name: write rediss-sentinel:\/\/h1:26379\/<masterName>/],
    ["rediss-sentinel://h1/m#x", /the master name goes in the path \(rediss-sentinel:\/\/host:26379\/mymaster\)/],
  ])("refuses %j", (raw, message) => {
    expect(() => parseRedisUrl(raw)).toThrow(message);
  });

  it("reads rediss-sentinel:// as the same group reached over TLS", () => {
    expect(parseRedisUrl("rediss-sentinel://app:p%40ss@10.0.0.1,10.0.0.2:26380/mymaster?db=1&sentinelPassword=sp")).toEqual({
      kind: "sentinel",
      sentinels: [
        { host: "10.0.0.1", port: 26379 },
        { host: "10.0.0.2", port: 26380 },
      ],
      name: "mymaster",
      db: 1,
      tls: true,
      username: "app",
      password: "p@ss",
      sentinelPassword: "sp",
    });
    expect(parseRedisUrl("RediSS-Sentinel://h/m")).toMatchObject({ kind: "sentinel", tls: true });
    expect(parseRedisUrl("redis-sentinel://h/m")).toMatchObject({ kind: "sentinel", tls: false });
  });
});

describe("secrets in messages", () => {
  // Passwords holding characters that should have been percent-encoded: the parser cuts them into
  // pieces that land in host, port or path positions. No piece of them may show.
  const pieces = ["Zq9", "Xv7", "Kp3", "Wm5"];
  it.each([
    "redis-sentinel://u:Zq9/Xv7@h1/m",
    "rediss-sentinel://u:Zq9?Xv7@h1/m",
    "redis-sentinel://u:Zq9/Xv7/Kp3Wm5@h1/m",
    "redis-sentinel://u:Zq9@/m?sentinelPassword=Xv7Kp3",
    "redis-sentinel://u:Zq9@h1?sentinelPassword=Xv7Kp3",
    "redis-sentinel://h1/m?sentinelPassword=Xv7@Kp3&bogus=1",
    "redis-sentinel://u:Zq9Kp3@h1/m/x?sentinelPassword=Xv7Wm5",
    "redis-sentinel://u:Zq9Kp3@h1/m?db=x&sentinelPassword=Xv7Wm5",
    "redis://u:1/Zq9/Xv7@h",
    "rediss://u:12/Xv7Kp3@h",
    "redis://u:Zq9#Xv7@h",
    "redis://u:Zq9@h:0?password=Kp3Wm5",
    "http://u:Zq9@h?password=Kp3Wm5",
    "u:Zq9Xv7@h:6379",
  ])("%j fails without any piece of a password", (raw) => {
    const message = thrown(() => parseRedisUrl(raw));
    expect(message).not.toBe("");
    for (const p of pieces) expect(message).not.toContain(p);
    expect(thrown(() => redisUrlSetting(raw))).toBe(message);
  });

  it("says why a part of the URL is hidden", () => {
    expect(thrown(() => parseRedisUrl("redis-sentinel://u:Zq9/Xv7@h1/m"))).toMatch(
      /^bad Sentinel port "\*\*\*" in "\*\*\*" \(\*\*\* is a part of the URL that may belong to a password: percent-encode @ : \/ \? # & , and % inside credentials\)$/,
    );
    // Nothing hidden, no hint.
    expect(thrown(() => parseRedisUrl("redis-sentinel://u:pw@h1:x/m"))).toBe('bad Sentinel port "x" in "h1:x"');
  });

  it("redactRedisUrl masks credentials and password parameters, and nothing else", () => {
    expect(redactRedisUrl("redis://h:6379/2")).toBe("redis://h:6379/2");
    expect(redactRedisUrl("rediss://app:s3cret@h:6380/1")).toBe("rediss://***@h:6380/1");
    expect(redactRedisUrl("redis://:p@ss@h")).toBe("redis://***@h");
    expect(redactRedisUrl("redis://h?password=x&db=1")).toBe("redis://h?password=***&db=1");
    expect(redactRedisUrl("rediss-sentinel://u:pw@a:1,b:2/m?db=1&sentinelUsername=su&sentinelPassword=sp")).toBe(
      "rediss-sentinel://***@a:1,b:2/m?db=1&sentinelUsername=su&sentinelPassword=***",
    );
    // A raw "@" inside a password parameter is not the end of the userinfo.
    expect(redactRedisUrl("redis-sentinel://a,b/m?sentinelPassword=x@y")).toBe("redis-sentinel://a,b/m?sentinelPassword=***");
    expect(redactRedisUrl("redis-sentinel://u:p@a/m?sentinelPassword=x@y")).toBe("redis-sentinel://***@a/m?sentinelPassword=***");
    expect(redactRedisUrl("redis-sentinel://a/m?sentinelPassword=")).toBe("redis-sentinel://a/m?sentinelPassword=");
  });
});

describe("the --redis setting", () => {
  it("has a help line naming every form", () => {
    for (const form of ["redis://", "rediss://", "redis-sentinel://", "rediss-sentinel://"]) expect(REDIS_URL_HELP).toContain(form);
    expect(thrown(() => parseRedisUrl("http://h"))).toContain("rediss-sentinel://");
  });

  const specs = { redis: { env: "TASKMESH_REDIS", default: "redis://127.0.0.1:6379", parse: redisUrlSetting, help: "Redis URL" } };

  it("keeps a good URL as written and fails fast naming the flag on a bad one", () => {
    expect(readSettings("svc", specs, ["--redis", "redis-sentinel://a,b/m"], {}).redis).toBe("redis-sentinel://a,b/m");
    expect(readSettings("svc", specs, [], { TASKMESH_REDIS: "redis://h:1/2" }).redis).toBe("redis://h:1/2");
    expect(() => readSettings("svc", specs, ["--redis", "redis-sentinel://a:1"], {})).toThrow(
      /^svc: --redis: no master name: write redis-sentinel:\/\/a:1\/<masterName>/,
    );
    expect(() => readSettings("svc", specs, [], { TASKMESH_REDIS: "localhost:6379" })).toThrow(/^svc: --redis: expected redis:\/\//);
  });
});

describe("redisClientOptions", () => {
  it("gives a Sentinel target ioredis' Sentinel options, taskmesh's failover detection and bounded waits", () => {
    const o = redisClientOptions(parseRedisUrl("redis-sentinel://:pw@h1:1,h2:2/m?db=3&sentinelPassword=sp"), {
      maxRetriesPerRequest: 2,
    });
    expect(o).toMatchObject({
      sentinels: [
        { host: "h1", port: 1 },
        { host: "h2", port: 2 },
      ],
      name: "m",
      role: "master",
      db: 3,
      password: "pw",
      sentinelPassword: "sp",
      Connector: FailoverAwareSentinelConnector,
      failoverDetector: false,
      updateSentinels: true,
      commandTimeout: DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
      socketTimeout: DEFAULT_REDIS_COMMAND_TIMEOUT_MS + 1000,
      maxRetriesPerRequest: 2,
    });
    expect(o).not.toHaveProperty("username");
    expect(o.reconnectOnError?.(new Error("READONLY You can't write against a read only replica."))).toBe(2);
    expect(o.reconnectOnError?.(new Error("ERR unknown command"))).toBe(false);
    expect(o.sentinelRetryStrategy?.(50)).toBe(1000);
  });

  it("lets the caller move the command timeout, and the socket timeout with it", () => {
    const o = redisClientOptions(parseRedisUrl("redis://h"), { commandTimeout: 7000, enableAutoPipelining: false });
    expect(o).toMatchObject({ commandTimeout: 7000, socketTimeout: 8000, enableAutoPipelining: false, maxRetriesPerRequest: 3 });
    expect(o).not.toHaveProperty("sentinels");
  });

  it("reconnects quickly: 50 ms doubling, capped at half a second plus jitter", () => {
    for (let i = 0; i < 20; i++) {
      expect(redisReconnectDelay(1)).toBeGreaterThanOrEqual(50);
      expect(redisReconnectDelay(1)).toBeLessThan(100);
      expect(redisReconnectDelay(3)).toBeGreaterThanOrEqual(200);
      expect(redisReconnectDelay(30)).toBeGreaterThanOrEqual(500);
      expect(redisReconnectDelay(30)).toBeLessThan(550);
    }
  });
});

describe("Redis over TLS: files and settings", () => {
  const dir = mkdtempSync(join(tmpdir(), "taskmesh-redis-url-test-"));
  const pem = (name: string, label: string): string => {
    const path = join(dir, name);
    writeFileSync(path, `-----BEGIN ${label}-----\n${name}\n-----END ${label}-----\n`);
    return path;
  };
  const ca = pem("ca.crt", "CERTIFICATE");
  const cert = pem("client.crt", "CERTIFICATE");
  const key = pem("client.key", "PRIVATE KEY");
  const notPem = join(dir, "not.pem");
  writeFileSync(notPem, "hello\n");
  const read = (path: string): string => readFileSync(path, "utf8");

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("gives a rediss:// client the CA and the client certificate, read from the files", () => {
    const o = redisClientOptions(parseRedisUrl("rediss://u:pw@h:6380"), {}, { ca, cert, key });
    expect(o.tls).toEqual({ ca: read(ca), cert: read(cert), key: read(key) });
    expect(redisClientOptions(parseRedisUrl("rediss://h"), {}, { ca }).tls).toEqual({ ca: read(ca) });
    expect(redisClientOptions(parseRedisUrl("rediss://h"), {}, { ca: "", cert: " ", key: "" }).tls).toEqual({});
    // TLS even when the scheme is not written in lower case (ioredis only recognizes "rediss://").
    expect(redisClientOptions(parseRedisUrl("REDISS://h")).tls).toEqual({});
    expect(redisClientOptions(parseRedisUrl("redis://h"))).not.toHaveProperty("tls");
    expect(redisClientOptions(parseRedisUrl("redis://h"), {}, {})).not.toHaveProperty("tls");
  });

  it("gives a rediss-sentinel:// client TLS to the Sentinels and to Redis, with the failover-aware connector", () => {
    const o = redisClientOptions(parseRedisUrl("rediss-sentinel://:pw@h1:1/m?sentinelPassword=sp"), { maxRetriesPerRequest: 1 }, { ca, cert, key });
    expect(o).toMatchObject({
      enableTLSForSentinelMode: true,
      tls: { ca: read(ca), cert: read(cert), key: read(key) },
      sentinelTLS: { ca: read(ca), cert: read(cert), key: read(key) },
      Connector: FailoverAwareSentinelConnector,
      failoverDetector: false,
      password: "pw",
      sentinelPassword: "sp",
      maxRetriesPerRequest: 1,
    });
    expect(redisClientOptions(parseRedisUrl("rediss-sentinel://h1/m"))).toMatchObject({ enableTLSForSentinelMode: true, tls: {}, sentinelTLS: {} });
    const plain = redisClientOptions(parseRedisUrl("redis-sentinel://h1/m"));
    expect(plain).not.toHaveProperty("tls");
    expect(plain).not.toHaveProperty("sentinelTLS");
    expect(plain).not.toHaveProperty("enableTLSForSentinelMode");
  });

  it("refuses TLS files with a URL without TLS, naming the settings and no password", () => {
    expect(thrown(() => createRedis("redis://u:topsecret@h:6379", { lazyConnect: true }, { ca }))).toBe(
      "--redis-ca is set but the Redis URL is redis:// (no TLS): write rediss://… or rediss-sentinel://… to use TLS",
    );
    expect(thrown(() => redisClientOptions(parseRedisUrl("redis-sentinel://:topsecret@h/m"), {}, { ca, cert, key }))).toBe(
      "--redis-ca, --redis-cert, --redis-key are set but the Redis URL is redis-sentinel:// (no TLS): write rediss://… or rediss-sentinel://… to use TLS",
    );
  });

  it("refuses a certificate without its key and the reverse", () => {
    expect(thrown(() => redisClientOptions(parseRedisUrl("rediss://h"), {}, { cert }))).toBe(
      "--redis-cert is set without --redis-key: a client certificate needs both --redis-cert and --redis-key",
    );
    expect(thrown(() => redisClientOptions(parseRedisUrl("rediss://h"), {}, { ca, key }))).toBe(
      "--redis-key is set without --redis-cert: a client certificate needs both --redis-cert and --redis-key",
    );
  });

  it("names the file it cannot read, and one that is no PEM", () => {
    const missing = join(dir, "missing.crt");
    expect(thrown(() => createRedis("rediss://h", { lazyConnect: true }, { ca: missing }))).toBe(
      `cannot read the Redis TLS ca file (--redis-ca) ${JSON.stringify(missing)}: ENOENT`,
    );
    expect(thrown(() => createRedis("rediss-sentinel://h/m", { lazyConnect: true }, { ca, cert: notPem, key }))).toBe(
      `the Redis TLS cert file (--redis-cert) ${JSON.stringify(notPem)} is not PEM (no "-----BEGIN" line)`,
    );
  });

  const tlsSpecs = { redis: { default: "redis://127.0.0.1:6379", parse: redisUrlSetting, help: "Redis URL" }, ...redisTlsSettings };

  it("reads --redis-ca, --redis-cert and --redis-key from flags and env, all off by default", () => {
    const off = readSettings("svc", tlsSpecs, [], {});
    expect(off).toEqual({ redis: "redis://127.0.0.1:6379", "redis-ca": "", "redis-cert": "", "redis-key": "" });
    expect(redisTlsFrom(off)).toBeUndefined();
    const on = readSettings("svc", tlsSpecs, ["--redis", "rediss://h:6380", "--redis-ca", ca], {
      TASKMESH_REDIS_CERT: cert,
      TASKMESH_REDIS_KEY: key,
    });
    expect(redisTlsFrom(on)).toEqual({ ca, cert, key });
    expect(redisTlsFrom({ redis: "rediss-sentinel://h/m", "redis-ca": ` ${ca} `, "redis-cert": "", "redis-key": "" })).toEqual({ ca });
    // Without the URL only the combination is checked.
    expect(redisTlsFrom({ "redis-ca": ca, "redis-cert": "", "redis-key": "" })).toEqual({ ca });
    for (const spec of Object.values(redisTlsSettings)) expect(spec.help).not.toBe("");
  });

  it("redisTlsFrom fails naming the settings: half a client certificate, or files with a URL without TLS", () => {
    const values = (redis: string, ca: string, cert: string, key: string) => ({ redis, "redis-ca": ca, "redis-cert": cert, "redis-key": key });
    expect(thrown(() => redisTlsFrom(values("rediss://h", "", cert, "")))).toMatch(/^--redis-cert is set without --redis-key/);
    expect(thrown(() => redisTlsFrom(values("rediss://h", ca, "", key)))).toMatch(/^--redis-key is set without --redis-cert/);
    const message = thrown(() => redisTlsFrom(values("redis://u:topsecret@h", ca, "", "")));
    expect(message).toBe("--redis-ca is set but the Redis URL is redis:// (no TLS): write rediss://… or rediss-sentinel://… to use TLS");
    expect(thrown(() => redisTlsFrom(values("redis-sentinel://h/m?sentinelPassword=topsecret", "", cert, key)))).toMatch(
      /^--redis-cert, --redis-key are set but the Redis URL is redis-sentinel:\/\/ \(no TLS\)/,
    );
    expect(thrown(() => redisTlsFrom(values("redis://u:topsecret@h", "", "", "")))).toBe("");
  });
});

describe("a client's errors carry no password", () => {
  /** A reply error as ioredis makes it for a refused login: with the command and its arguments. */
  const refused = (name: string, args: string[]): Error =>
    Object.assign(new Error("WRONGPASS invalid username-password pair or user is disabled."), { command: { name, args } });

  it("masks the credentials of AUTH and HELLO in emitted errors, also on duplicates", () => {
    const redis = createRedis("redis://app:topsecret@127.0.0.1:1", { lazyConnect: true });
    const sub = redis.duplicate();
    const seen: unknown[] = [];
    for (const c of [redis, sub]) c.on("error", (err: unknown) => seen.push(err));
    redis.silentEmit("error", refused("auth", ["app", "topsecret"]));
    sub.silentEmit("error", refused("hello", ["3", "AUTH", "app", "topsecret", "SETNAME", "n"]));
    redis.silentEmit("error", new Error("other", { cause: refused("auth", ["topsecret"]) }));
    expect(seen).toHaveLength(3);
    for (const err of seen) expect(inspect(err, { depth: 5 })).not.toContain("topsecret");
    expect((seen[0] as { command: unknown }).command).toEqual({ name: "auth", args: ["***", "***"] });
    expect((seen[1] as { command: unknown }).command).toEqual({ name: "hello", args: ["3", "AUTH", "***", "***", "SETNAME", "n"] });
    // Other commands keep their arguments.
    const get = Object.assign(new Error("ERR"), { command: { name: "get", args: ["k"] } });
    redis.silentEmit("error", get);
    expect(get.command.args).toEqual(["k"]);
    redis.disconnect();
    sub.disconnect();
  });
});
