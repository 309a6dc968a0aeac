-- reap: deletes finished tasks whose result TTL passed: every key and index entry of the task.
-- The queue's P:reap entry becomes its next expiry; a queue left with nothing at all (no task in
-- any state, not paused) is taken out of P:queues and every index: empty queues do not pile up.
-- KEYS: 1 done, 2 dead, 3 running, 4 delayed, 5 paused flag, 6 P:queues, 7 retry-wait counter,
--   8 concurrency counts
-- ARGV[6] limit, ARGV[7] Q's tag. Returns {how many tasks were deleted, 1 if Q was removed}.
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
index_next('reap', KEYS[1])
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[3]) > 0 or redis.call('ZCARD', KEYS[4]) > 0
  or redis.call('EXISTS', KEYS[5]) == 1 or not ready_empty() then
  return {n, 0}
end
-- Every task is in exactly one of: a ready list, running, delayed, done. None is left.
unregister_queue(Q, ARGV[7])
ready_forget()
redis.call('DEL', KEYS[7], KEYS[8])
for _, name in ipairs({'due', 'lease', 'reap'}) do redis.call('ZREM', P .. ':' .. name, Q) end
return {n, 1}
