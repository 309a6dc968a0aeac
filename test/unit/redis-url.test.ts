import { describe, expect, it } from "vitest";
import {
  DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
  FailoverAwareSentinelConnector,
  parseRedisUrl,
  redisClientOptions,
  redisReconnectDelay,
  redisUrlSetting,
} from "../../lib/redis.js";
import { readSettings } from "../../lib/settings.js";

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
    ["rediss-sentinel://h1/m", /"rediss-sentinel:\/\/" is not supported/],
    ["redis+sentinel://h1/m", /"redis\+sentinel:\/\/" is not supported/],
  ])("refuses %j", (raw, message) => {
    expect(() => parseRedisUrl(raw)).toThrow(message);
  });
});

describe("the --redis setting", () => {
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
