import type { Redis, Result } from "ioredis";

/** A token bucket's settings: `ratePerSecond` tokens per second up to `burst`; rate 0 = no limit. */
export interface RateLimits {
  ratePerSecond: number;
  burst: number;
}

/** What a take returned: allowed, or how long until a token is there. */
export interface RateDecision {
  allowed: boolean;
  retryAfterMs: number;
}

// One atomic refill-and-take per call. KEYS[1] bucket; ARGV rate/s, burst, now ms, cost.
const TAKE = `
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local ok = 0
if tokens >= cost then tokens = tokens - cost; ok = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
if ok == 1 then return {1, 0} end
return {0, math.ceil((cost - tokens) * 1000 / rate)}
`;

declare module "ioredis" {
  interface RedisCommander<Context> {
    tmRateTake(key: string, rate: number, burst: number, now: number, cost: number): Result<[number, number], Context>;
  }
}

/**
 * Per-key token buckets in Redis, so every gateway replica shares one budget per API key.
 * Limits are read on every call, for the key (they come from live configuration).
 */
export class RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly limits: (key: string) => RateLimits,
  ) {
    redis.defineCommand("tmRateTake", { numberOfKeys: 1, lua: TAKE });
  }

  /** Takes one token from `key`'s bucket. */
  async take(key: string, cost = 1): Promise<RateDecision> {
    const { ratePerSecond, burst } = this.limits(key);
    if (ratePerSecond <= 0) return { allowed: true, retryAfterMs: 0 };
    const [ok, wait] = await this.redis.tmRateTake(
      `${this.prefix}:rl:${key}`,
      ratePerSecond,
      Math.max(1, burst),
      Date.now(),
      cost,
    );
    return { allowed: ok === 1, retryAfterMs: wait };
  }
}
