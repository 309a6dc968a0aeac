-- expire: running tasks whose lease deadline passed go back in line.
-- The queue's P:lease entry becomes its next lease deadline (lib.lua indexes).
-- Leader-only: fenced by epoch (lib.lua fence).
-- KEYS: 1 running, 2 done, 3 dead, 4 concurrency counts, 5 epoch
-- ARGV[6] limit, ARGV[7] max re-queues per task, ARGV[8] the caller's epoch, ARGV[9] until when
-- it leads (ms).
-- Returns the re-queued refs flattened: {id, attempt, ...} (not those requeue_running ended).
local fenced = fence(KEYS[5], ARGV[8], ARGV[9])
if fenced then return fenced end
local k = {running = KEYS[1], done = KEYS[2], dead = KEYS[3], cc = KEYS[4]}
local max_rq = tonumber(ARGV[7])
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'a')
  if tonumber(f[1]) == RUNNING then
    if requeue_running(id, tk, f[2], 'LEASE_EXPIRED', 'lease expired', max_rq, k) then
      out[#out + 1] = id
      out[#out + 1] = f[2]
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
index_next('lease', KEYS[1])
return out
