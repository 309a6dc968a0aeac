-- retry: a FAILED or CANCELLED (dead-lettered) task is queued again now. Its attempt count is
-- kept, so the next claim makes attempt+1; its re-queue count (field rq) starts again from 0.
-- The task counts again among its tenant's unfinished ones (not checked against the quota:
-- it was admitted once).
-- KEYS: 1 done, 2 dead
-- ARGV[6] tenant, ARGV[7] id.
-- Returns {'x'} unknown (or another tenant's), {'d'} not dead, {'ok', task}.
local id = ARGV[7]
local tk = tkey(id)
local f = redis.call('HMGET', tk, 's', 'n', 'a', 'p')
local st = tonumber(f[1])
if not st or f[2] ~= ARGV[6] then return {'x'} end
if st ~= FAILED and st ~= CANCELLED then return {'d'} end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
-- The implied end event (and claim) are built from fields about to change: store them first.
flush_events(id, tk)
redis.call('HSET', tk, 's', QUEUED, 'e', NOW_S, 'h', NOW_S)
redis.call('HDEL', tk, 'f', 'cx', 'rq')
ready_add(id, NOW_S, f[4], f[2])
tq_add(f[2], 1)
status_event(id, tk, st, QUEUED, f[3] or 0, ',"at":' .. NOW_S)
return {'ok', load_task(Q, id)}
