-- recover: hands out again the ticks whose claimer did not finish them before their lease
-- deadline (it crashed, or lost Redis, between claim and finish).
-- KEYS: 1 P:sch:pend. ARGV[3] new lease deadline ms, ARGV[4] limit.
-- A tick whose task was in fact submitted (its idempotency key P:idem:<tenant>:schedule:<id>:<tick>
-- exists: the task store's key, same prefix) is finished here instead, even if that task was
-- already reaped; a tick of a deleted schedule is dropped.
-- Returns {ref, tick, tenant, task template JSON} per tick to submit again.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, m in ipairs(members) do
  local ref, tick = string.match(m, '^(.*):(%d+)$')
  local tenant, id = string.match(ref or '', '^([^:]+):(.+)$')
  local v = tenant and redis.call('HMGET', skey(ref), 'ten', 'task') or {false, false}
  if not v[1] then
    redis.call('ZREM', KEYS[1], m)
  else
    local done = redis.call('GET', P .. ':idem:' .. tenant .. ':schedule:' .. id .. ':' .. tick)
    if done then
      redis.call('ZREM', KEYS[1], m)
      record_last(ref, tick, done)
    else
      redis.call('ZADD', KEYS[1], ARGV[3], m)
      out[#out + 1] = {ref, tick, v[1], v[2]}
    end
  end
end
return out
