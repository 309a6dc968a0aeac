-- promote: DELAYED and RETRY_WAIT tasks that are due become QUEUED. A promoted task counts as
-- enqueued at its due time, so a late promotion does not cost it its place.
-- The queue's P:due entry becomes its next due time (lib.lua indexes).
-- KEYS: 1 delayed, 2 retry-wait counter
-- ARGV[6] limit. Returns {how many were promoted, the tenants of the promoted tasks}.
local n = 0
local tenants, seen = {}, {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_S, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[6]))
for i = 1, #due, 2 do
  local id, at = due[i], due[i + 1]
  redis.call('ZREM', KEYS[1], id)
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'a', 'p', 'c', 'n')
  local st = tonumber(f[1])
  if st == DELAYED or st == RETRY_WAIT then
    if st == RETRY_WAIT then redis.call('DECR', KEYS[2]) end
    flush_events(id, tk)
    redis.call('HSET', tk, 's', QUEUED)
    if at == f[4] then redis.call('HDEL', tk, 'e') else redis.call('HSET', tk, 'e', at) end
    ready_add(id, at, f[3], f[5])
    local tn = f[5] or ''
    if not seen[tn] then
      seen[tn] = true
      tenants[#tenants + 1] = tn
    end
    status_event(id, tk, st, QUEUED, f[2] or 0, '')
    n = n + 1
  end
end
index_next('due', KEYS[1])
return {n, tenants}
