-- retry: a FAILED or CANCELLED (dead-lettered) task is queued again now. Its attempt count is
-- kept, so the next claim makes attempt+1; its re-queue count (field rq) starts again from 0.
-- KEYS: 1 ready, 2 done, 3 dead
-- ARGV[6] tenant, ARGV[7] id.
-- Returns {'x'} unknown (or another tenant's), {'d'} not dead, {'ok', task}.
local id = ARGV[7]
local tk = tkey(id)
local f = redis.call('HMGET', tk, 'st', 'ten', 'att', 'pri')
local st = tonumber(f[1])
if not st or f[2] ~= ARGV[6] then return {'x'} end
if st ~= FAILED and st ~= CANCELLED then return {'d'} end
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('HSET', tk, 'st', QUEUED, 'enq', NOW_S, 'sch', NOW_S)
redis.call('HDEL', tk, 'fin', 'cxl', 'rq')
redis.call('ZADD', KEYS[1], ready_score(NOW, f[4] or 2), id)
status_event(id, tk, st, QUEUED, f[3] or 0, ',"at":' .. NOW_S)
return {'ok', load_task(Q, id)}
