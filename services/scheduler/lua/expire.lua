-- expire: running tasks whose lease deadline passed go back to the ready set.
-- KEYS: 1 ready, 2 running, 3 done, 4 dead, 5 concurrency counts
-- ARGV[6] limit, ARGV[7] max re-queues per task.
-- Returns the re-queued refs flattened: {id, attempt, ...} (not those requeue_running ended).
local k = {ready = KEYS[1], running = KEYS[2], done = KEYS[3], dead = KEYS[4], cc = KEYS[5]}
local max_rq = tonumber(ARGV[7])
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'st', 'att')
  if tonumber(f[1]) == RUNNING then
    if requeue_running(id, tk, f[2], 'LEASE_EXPIRED', 'lease expired', max_rq, k) then
      out[#out + 1] = id
      out[#out + 1] = f[2]
    end
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
