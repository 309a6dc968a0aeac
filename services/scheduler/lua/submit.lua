-- submit: stores new tasks of queue Q, honouring idempotency keys.
-- KEYS: 1 delayed, 2 P:queues
-- ARGV[6] Q's tag (the last two characters of its task ids; see lib.lua register_queue).
-- ARGV[7..]: per task 7 values and then its hash: id, tenant, idempotency key, run-at ms
--   (0 = now), priority, spec JSON for the key d:<id> ('' = none: a short spec is in the hash),
--   n, then n values: the hash's fields and values (task-codec.ts hashOfNew).
-- Returns per task: {'n'} when created, {'e', task} when an earlier task with the same
-- (tenant, idempotency key) still exists (see load_task), {'x'} when the id is taken.
-- The first event (seq 1, status QUEUED or DELAYED) is not written to the event list: it follows
-- from fields c and r, and task-codec.ts rebuilds it.
local out = {}
register_queue(Q, ARGV[6])
local i = 7
while i <= #ARGV do
  local id, tenant, ikey = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local run_at, pri, big_spec = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local first, n = i + 7, tonumber(ARGV[i + 6])
  i = first + n
  local existing = false
  local idem_key = false
  if ikey ~= '' then
    -- Unambiguous because tenant names never contain ':' (the scheduler's RPC layer admits
    -- only /^[A-Za-z0-9_.-]{1,100}$/); a tenant with ':' could collide with another's keys.
    idem_key = P .. ':idem:' .. tenant .. ':' .. ikey
    local prev = redis.call('GET', idem_key)
    if prev then
      local pq = queue_of(prev)
      -- A first task reaped before the key expired (result TTL < 24 h) no longer counts.
      if pq then existing = load_task(pq, prev) end
    end
  end
  local tk = tkey(id)
  if existing then
    out[#out + 1] = {'e', existing}
  elseif redis.call('EXISTS', tk) == 1 then
    out[#out + 1] = {'x'}
  else
    if idem_key then redis.call('SET', idem_key, id, 'PX', 86400000) end
    redis.call('HSET', tk, unpack(ARGV, first, first + n - 1))
    if big_spec ~= '' then redis.call('SET', dkey(id), big_spec) end
    if run_at > NOW then
      redis.call('ZADD', KEYS[1], run_at, id)
    else
      ready_add(id, NOW, pri)
    end
    tenant_add(tenant, id)
    redis.call('PUBLISH', P .. ':ev:' .. id, 1)
    out[#out + 1] = {'n'}
  end
end
return out
