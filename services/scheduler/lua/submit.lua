-- submit: stores new tasks of queue Q, honouring idempotency keys, and hands a new task straight
-- to a worker when the leader asked for that and nothing is waiting before it.
-- KEYS: 1 delayed, 2 P:queues, 3 running, 4 concurrency counts, 5 paused flag, 6 epoch
-- ARGV[6] Q's tag (the last two characters of its task ids; see lib.lua register_queue).
-- ARGV[7] lease ms of a direct claim (0: the caller asks for none), ARGV[8] the epoch of the
-- leader asking for direct claims and ARGV[9] until when it leads (a leader-only write: a write
-- fenced as lib.lua epoch_current says gets no direct claim, its tasks queue as usual).
-- ARGV[10..]: per task 8 values and then its hash: id, tenant, idempotency key, run-at ms
--   (0 = now), priority, spec JSON for the key d:<id> ('' = none: a short spec is in the hash),
--   worker id for a direct claim ('' = none), n, then n values: the hash's fields and values
--   (task-codec.ts hashOfNew).
-- Returns per task: {'n'} when created and queued (or delayed), {'c', attempt, type, tenant,
-- spec JSON, traceparent, ready ms} when created and claimed for its worker at once (as claim.lua
-- returns a claimed task), {'e', task} when an earlier task with the same (tenant, idempotency
-- key) still exists, or when the id is taken by a task of the same tenant (a retried request;
-- see load_task), {'x'} when the id is taken by another tenant's task.
-- A direct claim happens only when it changes no order: the task is due now, the queue is not
-- paused, no task of the queue is QUEUED (all its ready lists are empty, so none would have gone
-- first) and its concurrency key has room. Otherwise the task queues as usual.
-- The first event (seq 1, status QUEUED or DELAYED) is not written to the event list: it follows
-- from fields c and r, and task-codec.ts rebuilds it; a direct claim is the implied event 2, as
-- in claim.lua.
local out = {}
register_queue(Q, ARGV[6])
local lease_ms = tonumber(ARGV[7])
local direct = lease_ms > 0 and redis.call('EXISTS', KEYS[5]) == 0 and epoch_current(KEYS[6], ARGV[8], ARGV[9])
local function nothing_queued()
  for p = 1, 4 do
    if redis.call('LLEN', readyk(p)) > 0 then return false end
  end
  return true
end
local i = 10
while i <= #ARGV do
  local id, tenant, ikey = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local run_at, pri, big_spec, wid = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local first, n = i + 8, tonumber(ARGV[i + 7])
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
    -- The id is taken. Ids derived from a request id (submit.ts requestTaskIds) are taken by an
    -- earlier attempt of the same request: answer with what it stored, as for an idempotency
    -- key. Never another tenant's task.
    if redis.call('HGET', tk, 'n') == tenant then
      out[#out + 1] = {'e', load_task(Q, id)}
    else
      out[#out + 1] = {'x'}
    end
  else
    if idem_key then redis.call('SET', idem_key, id, 'PX', 86400000) end
    redis.call('HSET', tk, unpack(ARGV, first, first + n - 1))
    if big_spec ~= '' then redis.call('SET', dkey(id), big_spec) end
    local claimed = false
    if run_at > NOW then
      redis.call('ZADD', KEYS[1], run_at, id)
    else
      if wid ~= '' and direct and nothing_queued() then
        local f = redis.call('HMGET', tk, 'y', 'n', 'ck', 'cl', 'tp', 'd')
        if not cc_blocked(KEYS[4], f[3], f[4], 0) then
          redis.call('HSET', tk, 's', RUNNING, 'a', 1, 'w', wid, 'b', NOW_S, 'q', 2)
          redis.call('ZADD', KEYS[3], NOW + lease_ms, id)
          cc_take(KEYS[4], f[3])
          claimed = {'c', 1, f[1], f[2], spec_of(QP, id, f[6]), f[5] or '', NOW_S}
        end
      end
      if not claimed then ready_add(id, NOW, pri) end
    end
    tenant_add(tenant, id)
    redis.call('PUBLISH', P .. ':ev:' .. id, 1)
    if claimed then
      redis.call('PUBLISH', P .. ':ev:' .. id, 2)
      out[#out + 1] = claimed
    else
      out[#out + 1] = {'n'}
    end
  end
end
return out
