-- submit: stores new tasks of queue Q, honouring idempotency keys.
-- KEYS: 1 ready, 2 delayed, 3 P:queues, 4 P:ix
-- ARGV[6..]: per task 13 values: id, tenant, idempotency key, run-at ms (0 = now), priority,
--   type, affinity key, max attempts, result TTL ms, spec JSON, concurrency key ('' = none),
--   concurrency limit (0 = unlimited), W3C traceparent of the submitter ('' = none).
-- Returns per task: {'n'} when created, {'e', task} when an earlier task with the same
-- (tenant, idempotency key) still exists (see load_task).
-- The first event (seq 1, status QUEUED or DELAYED) is not written to the event list: it follows
-- from fields cr and rat (run-at, only for a delayed submit), and task-codec.ts rebuilds it.
-- That saves the list (about 260 bytes) for every task that has not started yet.
local out = {}
redis.call('SADD', KEYS[3], Q)
for i = 6, #ARGV, 13 do
  local id, tenant, ikey = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local run_at, pri = tonumber(ARGV[i + 3]), ARGV[i + 4]
  local existing = false
  local idem_key = false
  if ikey ~= '' then
    -- Unambiguous because tenant names never contain ':' (the scheduler's RPC layer admits
    -- only /^[A-Za-z0-9_.-]{1,100}$/); a tenant with ':' could collide with another's keys.
    idem_key = P .. ':idem:' .. tenant .. ':' .. ikey
    local prev = redis.call('GET', idem_key)
    if prev then
      local pq = redis.call('HGET', KEYS[4], prev)
      -- A first task reaped before the key expired (result TTL < 24 h) no longer counts.
      if pq then existing = load_task(pq, prev) end
    end
  end
  if existing then
    out[#out + 1] = {'e', existing}
  else
    if idem_key then redis.call('SET', idem_key, id, 'PX', 86400000) end
    local tk = tkey(id)
    local f = {'seq', 1, 'cr', NOW_S, 'ten', tenant, 'typ', ARGV[i + 5], 'pri', pri, 'max', ARGV[i + 7], 'ttl', ARGV[i + 8]}
    if run_at > NOW then
      local at = ARGV[i + 3]
      for _, v in ipairs({'st', DELAYED, 'sch', at, 'rat', at}) do f[#f + 1] = v end
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      for _, v in ipairs({'st', QUEUED, 'sch', NOW_S, 'enq', NOW_S}) do f[#f + 1] = v end
      redis.call('ZADD', KEYS[1], ready_score(NOW, pri), id)
    end
    if ARGV[i + 6] ~= '' then f[#f + 1] = 'aff'; f[#f + 1] = ARGV[i + 6] end
    if ARGV[i + 10] ~= '' then f[#f + 1] = 'ck'; f[#f + 1] = ARGV[i + 10] end
    if tonumber(ARGV[i + 11]) > 0 then f[#f + 1] = 'cl'; f[#f + 1] = ARGV[i + 11] end
    if ARGV[i + 12] ~= '' then f[#f + 1] = 'tp'; f[#f + 1] = ARGV[i + 12] end
    redis.call('HSET', tk, unpack(f))
    redis.call('SET', dkey(id), ARGV[i + 9])
    redis.call('HSET', KEYS[4], id, Q)
    redis.call('ZADD', P .. ':tn:' .. tenant, 0, id)
    redis.call('PUBLISH', P .. ':ev:' .. id, 1)
    out[#out + 1] = {'n'}
  end
end
return out
