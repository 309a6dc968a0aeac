-- expire: running tasks whose lease deadline passed go back to the ready set.
-- KEYS: 1 ready, 2 running, 3 done, 4 dead
-- ARGV[6] limit.
-- Returns the re-queued refs flattened: {id, attempt, ...}.
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'st', 'att', 'pri', 'enq', 'cxl', 'ttl')
  if tonumber(f[1]) == RUNNING then
    if requeue_running(id, tk, f[2], f[3], f[4], f[5], f[6], 'LEASE_EXPIRED', 'lease expired', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) then
      out[#out + 1] = id
      out[#out + 1] = f[2]
    end
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
