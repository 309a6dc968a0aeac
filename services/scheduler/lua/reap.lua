-- reap: deletes finished tasks whose result TTL passed: every key and index entry of the task.
-- KEYS: 1 done, 2 dead
-- ARGV[6] limit. Returns how many were deleted.
local n = 0
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'n')
  local st = tonumber(f[1])
  -- A task retried since it entered `done` is alive again: only its stale entry goes.
  if not st or is_terminal(st) then
    redis.call('DEL', tk, dkey(id), rkey(id), evkey(id))
    redis.call('ZREM', KEYS[2], id)
    if f[2] then tenant_remove(f[2], id) end
    n = n + 1
  end
end
return n
