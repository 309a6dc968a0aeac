-- submit: stores new tasks of queue Q, honouring idempotency keys, and hands a new task straight
-- to a worker when the leader asked for that and nothing is waiting before it.
-- KEYS: 1 delayed, 2 P:queues, 3 running, 4 concurrency counts, 5 paused flag, 6 epoch
-- ARGV[6] Q's tag (the last two characters of its task ids; see lib.lua register_queue).
-- ARGV[7] lease ms of a direct claim (0: the caller asks for none), ARGV[8] the epoch of the
-- leader asking for direct claims and ARGV[9] until when it leads (a leader-only write: a write
-- fenced as lib.lua epoch_current says gets no direct claim, its tasks queue as usual).
-- ARGV[10] L, the number of tenants with quotas, then L triples: tenant, most queues it may
--   have unfinished tasks in, most unfinished tasks it may have (0 = no limit). Tasks follow.
-- Then per task 8 values and then its hash: id, tenant, idempotency key, run-at ms
--   (0 = now), priority, spec JSON for the key d:<id> ('' = none: a short spec is in the hash),
--   worker id for a direct claim ('' = none), n, then n values: the hash's fields and values
--   (task-codec.ts hashOfNew).
-- Returns per task: {'n'} when created and queued (or delayed), {'c', attempt, type, tenant,
-- spec JSON, traceparent, ready ms} when created and claimed for its worker at once (as claim.lua
-- returns a claimed task), {'e', task} when an earlier task with the same (tenant, idempotency
-- key) still exists, or when the id is taken by a task of the same tenant (a retried request;
-- see load_task), {'x'} when the id is taken by another tenant's task.
-- Or, storing nothing, {'q', tenant, 'queues' or 'tasks', limit, how many it has}: the new tasks
-- would take a tenant over a quota (docs/fairness.md): `queues` when Q would be one queue too
-- many, `tasks` when its unfinished tasks would exceed the limit. Each new task counts in
-- P:tq:<tenant> (lib.lua tq_add) until it finishes.
-- A direct claim happens only when it changes no order: the task is due now, the queue is not
-- paused, no task of its tenant's lane is QUEUED (none would have gone first; other tenants'
-- lanes take turns, and the leader asks for no direct claim while they may wait: see
-- dispatcher.ts planDirect) and its concurrency key has room. Otherwise the task queues as usual.
-- The first event (seq 1, status QUEUED or DELAYED) is not written to the event list: it follows
-- from fields c and r, and task-codec.ts rebuilds it; a direct claim is the implied event 2, as
-- in claim.lua.
local out = {}
local lease_ms = tonumber(ARGV[7])
local quotas = {}
local L = tonumber(ARGV[10])
for j = 0, L - 1 do
  quotas[ARGV[11 + 3 * j]] = {tonumber(ARGV[12 + 3 * j]), tonumber(ARGV[13 + 3 * j])}
end

-- The tasks, and what each would meet: an earlier task (idempotency key, or its id taken).
local tasks = {}
-- New tasks by idempotency key: a later task of the batch with the same key gets the earlier one.
local batch_idem = {}
local i = 11 + 3 * L
while i <= #ARGV do
  local t = {
    id = ARGV[i], tenant = ARGV[i + 1], ikey = ARGV[i + 2], run_at = tonumber(ARGV[i + 3]),
    pri = ARGV[i + 4], big_spec = ARGV[i + 5], wid = ARGV[i + 6], first = i + 8, n = tonumber(ARGV[i + 7]),
  }
  i = t.first + t.n
  if t.ikey ~= '' then
    -- Unambiguous because tenant names never contain ':' (the scheduler's RPC layer admits
    -- only /^[A-Za-z0-9_.-]{1,100}$/); a tenant with ':' could collide with another's keys.
    t.idem_key = P .. ':idem:' .. t.tenant .. ':' .. t.ikey
    local prev = redis.call('GET', t.idem_key)
    if prev then
      local pq = queue_of(prev)
      -- A first task reaped before the key expired (result TTL < 24 h) no longer counts.
      if pq then t.existing = load_task(pq, prev) end
    end
    if not t.existing then
      t.same_as = batch_idem[t.idem_key]
      batch_idem[t.idem_key] = t.same_as or t
    end
  end
  if not t.existing and not t.same_as and redis.call('EXISTS', tkey(t.id)) == 1 then
    -- The id is taken. Ids derived from a request id (submit.ts requestTaskIds) are taken by an
    -- earlier attempt of the same request: answer with what it stored, as for an idempotency
    -- key. Never another tenant's task.
    if redis.call('HGET', tkey(t.id), 'n') == t.tenant then t.existing = load_task(Q, t.id) else t.foreign = true end
    -- Not stored, so no later task of the batch can be the same as it.
    if t.idem_key and batch_idem[t.idem_key] == t then batch_idem[t.idem_key] = nil end
  end
  tasks[#tasks + 1] = t
end

-- Quotas: checked for all the new tasks before any is stored.
local new_of = {}
for _, t in ipairs(tasks) do
  if not t.existing and not t.foreign and not t.same_as then new_of[t.tenant] = (new_of[t.tenant] or 0) + 1 end
end
for tenant, n in pairs(new_of) do
  local q = quotas[tenant]
  if q then
    local k = tqkey(tenant)
    if q[1] > 0 and redis.call('HEXISTS', k, Q) == 0 then
      local used = redis.call('HLEN', k) - redis.call('HEXISTS', k, '*')
      if used >= q[1] then return {'q', tenant, 'queues', q[1], used} end
    end
    local open = tonumber(redis.call('HGET', k, '*') or '0')
    if q[2] > 0 and open + n > q[2] then return {'q', tenant, 'tasks', q[2], open} end
  end
end

register_queue(Q, ARGV[6])
local direct = lease_ms > 0 and redis.call('EXISTS', KEYS[5]) == 0 and epoch_current(KEYS[6], ARGV[8], ARGV[9])
-- Per tenant: its new tasks (counted once at the end) and whether its lane got any.
local made, queued = {}, {}
for _, t in ipairs(tasks) do
  local id, tenant = t.id, t.tenant
  if t.existing then
    out[#out + 1] = {'e', t.existing}
  elseif t.foreign then
    out[#out + 1] = {'x'}
  elseif t.same_as then
    out[#out + 1] = {'e', load_task(Q, t.same_as.id)}
  else
    local tk = tkey(id)
    if t.idem_key then redis.call('SET', t.idem_key, id, 'PX', 86400000) end
    redis.call('HSET', tk, unpack(ARGV, t.first, t.first + t.n - 1))
    if t.big_spec ~= '' then redis.call('SET', dkey(id), t.big_spec) end
    local claimed = false
    if t.run_at > NOW then
      redis.call('ZADD', KEYS[1], t.run_at, id)
      index_at('due', t.run_at)
    else
      if t.wid ~= '' and direct and lane_empty(tenant) then
        local f = redis.call('HMGET', tk, 'y', 'n', 'ck', 'cl', 'tp', 'd')
        if not cc_blocked(KEYS[4], f[3], f[4], 0) then
          redis.call('HSET', tk, 's', RUNNING, 'a', 1, 'w', t.wid, 'b', NOW_S, 'q', 2)
          redis.call('ZADD', KEYS[3], NOW + lease_ms, id)
          index_at('lease', NOW + lease_ms)
          cc_take(KEYS[4], f[3])
          claimed = {'c', 1, f[1], f[2], spec_of(QP, id, f[6]), f[5] or '', NOW_S}
        end
      end
      if not claimed then
        ready_insert(id, NOW, t.pri, tenant)
        queued[tenant] = true
      end
    end
    tenant_add(tenant, id)
    made[tenant] = (made[tenant] or 0) + 1
    redis.call('PUBLISH', P .. ':ev:' .. id, 1)
    if claimed then
      redis.call('PUBLISH', P .. ':ev:' .. id, 2)
      out[#out + 1] = claimed
    else
      out[#out + 1] = {'n'}
    end
  end
end
for tenant in pairs(queued) do ready_index(tenant) end
for tenant, n in pairs(made) do tq_add(tenant, n) end
return out
