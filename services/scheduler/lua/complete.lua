-- complete: applies the results of attempts, fenced by attempt.
-- KEYS: 1 running, 2 delayed, 3 done, 4 dead, 5 retry-wait counter, 6 concurrency counts
-- ARGV[6..]: per item 7 values: id, attempt, kind, a, b, c, rand where kind is
--   's' succeeded (a = result JSON, '' for none), 'f' failed (a = code, b = message, c = '1' if
--   retryable), 'c' cancelled (a = reason); rand in [0, 1) spreads the backoff (Lua's PRNG is
--   seeded identically on every call, so the caller supplies the randomness).
-- A cancelled attempt ends the task only if a cancel was requested (field cx). Without one, the
-- worker gave up on its own (shutting down, say): that counts as a retryable failure ABORTED,
-- so the task is not lost. Whatever the outcome, the attempt stops RUNNING: its concurrency key
-- gets its place back.
-- A result of at most 64 bytes is kept in the hash (field o; Redis keeps a hash compact while
-- every value is at most hash-max-listpack-value, 64 by default), a longer one in key r:<id>.
-- Returns per item 1 (applied) or 0 (stale).
local INLINE_MAX = 64
local out = {}
for i = 6, #ARGV, 7 do
  local id, att, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'a', 'm', 'l', 'cx', 'ck', 'd')
  if tonumber(f[1]) ~= RUNNING or f[2] ~= att then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
    redis.call('ZREM', KEYS[1], id)
    cc_release(KEYS[6], f[6])
    if kind == 's' then
      local res = ARGV[i + 3]
      if res ~= '' then
        if #res <= INLINE_MAX then
          redis.call('HSET', tk, 'o', res)
        else
          redis.call('SET', rkey(id), res)
          redis.call('HSET', tk, 'o', '')
        end
      end
      finish(id, tk, RUNNING, SUCCEEDED, att, f[4], false, KEYS[3], KEYS[4])
    elseif f[5] then
      -- Cancel requested: the attempt's end, whatever it was, ends the task (never retried).
      finish(id, tk, RUNNING, CANCELLED, att, f[4], err_json('CANCELLED', f[5], false), KEYS[3], KEYS[4])
    else
      local retryable = ARGV[i + 5] == '1'
      local err
      if kind == 'c' then
        retryable = true
        err = err_json('ABORTED', ARGV[i + 3] ~= '' and ARGV[i + 3] or 'attempt cancelled by its worker', true)
      else
        err = err_json(ARGV[i + 3], ARGV[i + 4], retryable)
      end
      local n = tonumber(att)
      if retryable and n < (tonumber(f[3]) or DEF_MAX) then
        -- delay = min(max, initial * multiplier^(attempt-1)), spread by +/- jitter. A spec
        -- without `b` has the default backoff (task-codec.ts DEFAULT_BACKOFF).
        local spec = spec_of(QP, id, f[7])
        local b = (spec and cjson.decode(spec).b) or {1000, 60000, 2, 0.2}
        local initial, maxd = tonumber(b[1]) or 1000, tonumber(b[2]) or 60000
        local mult, jitter = tonumber(b[3]) or 2, tonumber(b[4]) or 0
        local delay = initial * mult ^ (n - 1)
        if delay > maxd then delay = maxd end
        delay = delay * (1 + jitter * (2 * tonumber(ARGV[i + 6]) - 1))
        if delay < 0 then delay = 0 end
        local at = NOW + math.floor(delay)
        flush_events(id, tk)
        redis.call('HSET', tk, 's', RETRY_WAIT, 'h', at, 'x', err)
        redis.call('ZADD', KEYS[2], at, id)
        index_at('due', at)
        redis.call('INCR', KEYS[5])
        status_event(id, tk, RUNNING, RETRY_WAIT, att, ',"e":' .. err .. ',"at":' .. string.format('%d', at))
      else
        finish(id, tk, RUNNING, FAILED, att, f[4], err, KEYS[3], KEYS[4])
      end
    end
  end
end
return out
