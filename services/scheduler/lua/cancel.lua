-- cancel: a waiting task ends at once; a running one gets a cancel request (field cx) that its
-- worker's cancelled result, a requeue or a failure then turns into CANCELLED.
-- KEYS: 1 delayed, 2 done, 3 dead, 4 retry-wait counter
-- ARGV[6] tenant, ARGV[7] id, ARGV[8] reason.
-- Returns {'x'} unknown (or another tenant's), {'c', task} cancelled now,
-- {'r', task, worker id, attempt} running, {'t', task} already finished.
local id, reason = ARGV[7], ARGV[8]
local tk = tkey(id)
local f = redis.call('HMGET', tk, 's', 'n', 'a', 'w', 'l', 'p')
local st = tonumber(f[1])
if not st or f[2] ~= ARGV[6] then return {'x'} end
if st == QUEUED or st == DELAYED or st == RETRY_WAIT then
  if st == QUEUED then ready_remove(id, f[6], f[2]) else redis.call('ZREM', KEYS[1], id) end
  if st == RETRY_WAIT then redis.call('DECR', KEYS[4]) end
  finish(id, tk, st, CANCELLED, f[3] or 0, f[5], err_json('CANCELLED', reason, false), KEYS[2], KEYS[3])
  return {'c', load_task(Q, id)}
end
if st == RUNNING then
  redis.call('HSET', tk, 'cx', reason)
  return {'r', load_task(Q, id), f[4] or '', f[3] or 0}
end
return {'t', load_task(Q, id)}
