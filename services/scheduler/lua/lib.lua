-- taskmesh task store: helpers prepended to every script (see task-store.ts for the key layout
-- and task-codec.ts for the fields of a task's hash).
--
-- Every script gets the same ARGV header:
--   ARGV[1] key prefix P, ARGV[2] queue name Q, ARGV[3] now (ms), ARGV[4] max events per task,
--   ARGV[5] aging ms per priority level; script arguments start at ARGV[6].
-- Queue-wide keys (running, delayed, ...) arrive in KEYS. Per-task keys and the queue's ready
-- lists are built here from P and Q, as BullMQ does: they share the queue's hash tag {Q}, so they
-- live in the same Redis Cluster slot as the declared keys. The global keys (P:queues,
-- P:tn:<tenant>, P:idem:...) do not: they are the known obstacle to running on Redis Cluster.
--
-- Task status numbers are taskmesh.v1.TaskStatus values.

local P = ARGV[1]
local Q = ARGV[2]
local NOW_S = ARGV[3]
local NOW = tonumber(NOW_S)
local MAX_EVENTS = tonumber(ARGV[4])
local AGING = tonumber(ARGV[5])

local QUEUED, DELAYED, RUNNING, RETRY_WAIT, SUCCEEDED, FAILED, CANCELLED = 1, 2, 3, 4, 5, 6, 7
-- What an absent hash field means (task-codec.ts STORED_DEFAULTS): priority, max attempts,
-- result TTL ms.
local DEF_PRI, DEF_MAX, DEF_TTL = 2, 3, 86400000

local QUEUES = P .. ':queues'

local function qprefix(queue)
  return P .. ':{' .. queue .. '}:'
end
local QP = qprefix(Q)
local function tkey(id) return QP .. 't:' .. id end
local function dkey(id) return QP .. 'd:' .. id end
local function rkey(id) return QP .. 'r:' .. id end
local function evkey(id) return QP .. 'ev:' .. id end
-- The ready list of priority `pri` in the lane of tenant `lane` (see ready lists below). Lane ''
-- keeps the key of the time before lanes (tasks queued then, until lead.lua moves them).
local function readyk(pri, lane)
  if lane == nil or lane == '' then return QP .. 'ready:' .. pri end
  return QP .. 'ready:' .. pri .. ':' .. lane
end
local LANES = QP .. 'lanes'
local function tnkey(tenant) return P .. ':tn:' .. tenant end

local function is_terminal(st)
  return st == SUCCEEDED or st == FAILED or st == CANCELLED
end

-- ---- queues and task ids ----
-- The last two characters of a task id are its queue's tag (task-codec.ts queueTag). P:queues
-- maps each queue name to its tag, and '}' .. tag to the names of the queues with that tag,
-- joined by '}' (which no queue name contains). So the queue of an id is found without a
-- per-task index.

local function register_queue(queue, tag)
  if redis.call('HGET', QUEUES, queue) ~= tag then
    redis.call('HSET', QUEUES, queue, tag)
    local names = redis.call('HGET', QUEUES, '}' .. tag)
    redis.call('HSET', QUEUES, '}' .. tag, names and (names .. '}' .. queue) or queue)
  end
end

-- Takes `queue` (of tag `tag`) out of P:queues: it has nothing left (reap.lua).
local function unregister_queue(queue, tag)
  if redis.call('HGET', QUEUES, queue) ~= tag then return end
  redis.call('HDEL', QUEUES, queue)
  local names = redis.call('HGET', QUEUES, '}' .. tag)
  local kept = {}
  if names then
    for name in string.gmatch(names, '[^}]+') do
      if name ~= queue then kept[#kept + 1] = name end
    end
  end
  if #kept == 0 then
    redis.call('HDEL', QUEUES, '}' .. tag)
  else
    redis.call('HSET', QUEUES, '}' .. tag, table.concat(kept, '}'))
  end
end

local tag_memo = {}
local function queues_of_tag(tag)
  local qs = tag_memo[tag]
  if not qs then
    qs = {}
    local names = redis.call('HGET', QUEUES, '}' .. tag)
    if names then
      for name in string.gmatch(names, '[^}]+') do qs[#qs + 1] = name end
    end
    tag_memo[tag] = qs
  end
  return qs
end

-- The queue that holds task `id`, or false. With one queue for the id's tag (the usual case) the
-- task is not looked up: callers find out themselves whether it exists.
local function queue_of(id)
  local qs = queues_of_tag(string.sub(id, -2))
  if #qs == 1 then return qs[1] end
  for _, q in ipairs(qs) do
    if redis.call('EXISTS', qprefix(q) .. 't:' .. id) == 1 then return q end
  end
  return false
end

-- ---- leader epochs ----
-- P:{Q}:epoch holds the epoch of the newest leader that did leader-only work on the queue
-- (claims, re-queues, lease expiry). A script called with an older epoch changes nothing and
-- fails with "FENCED <epoch>": its caller was deposed and must stop. Each such write refreshes
-- the key, which lives FENCE_TTL_MS after the last one, so that after etcd is rebuilt from
-- scratch (its revisions, the epochs, start low again) a leader can work again after that long.
local FENCE_TTL_MS = 60000
-- A leader-only write also carries `until_ms`: when its leader's lease stops being known to hold
-- (its own clock). A write that reaches Redis later than that (held in a socket buffer through a
-- partition, say, while another leader may have been elected) is refused too: by Redis's clock,
-- so hosts' clocks must agree to well within a lease (NTP does).
-- True, recording `epoch`, when the write may go ahead; else false and the newer epoch (0 when
-- the write came too late).
local function epoch_current(k, epoch, until_ms)
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(until_ms) then return false, 0 end
  local cur = tonumber(redis.call('GET', k) or '0')
  if tonumber(epoch) < cur then return false, cur end
  redis.call('SET', k, epoch, 'PX', FENCE_TTL_MS)
  return true
end
-- Returns an error reply to return when the write may not go ahead (see epoch_current), else false.
local function fence(k, epoch, until_ms)
  local ok, newer = epoch_current(k, epoch, until_ms)
  if ok then return false end
  return redis.error_reply('FENCED ' .. string.format('%d', newer))
end

-- ---- lists kept in order ----

-- Pushes `items` onto list k (RPUSH keeps their order at the tail; LPUSH puts the last one at
-- the head), in chunks because unpack has a limit.
local function push_all(cmd, k, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, k, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Inserts el into list k, kept in ascending order by less(a, b), after every element that does
-- not sort after it. O(1) at either end (the usual cases: a new task at the tail, a re-queued
-- one at the head); otherwise it scans inward from both ends in turn, so the cost is the
-- distance to the nearer end, and only the elements between that end and the place move.
local SCAN_CHUNK = 32
local function sorted_insert(k, el, less)
  local tail = redis.call('LINDEX', k, -1)
  if not tail or not less(el, tail) then
    redis.call('RPUSH', k, el)
    return
  end
  local head = redis.call('LINDEX', k, 0)
  if less(el, head) then
    redis.call('LPUSH', k, el)
    return
  end
  -- head <= el < tail: the place is inside. `after` elements at the tail sort after el;
  -- `before` elements at the head do not.
  local after, before = 1, 1
  while true do
    local xs = redis.call('LRANGE', k, -(after + SCAN_CHUNK), -(after + 1))
    for i = #xs, 1, -1 do
      if less(el, xs[i]) then
        after = after + 1
      else
        local moved = redis.call('RPOP', k, after)
        local back = {el}
        for j = #moved, 1, -1 do back[#back + 1] = moved[j] end
        push_all('RPUSH', k, back)
        return
      end
    end
    local ys = redis.call('LRANGE', k, before, before + SCAN_CHUNK - 1)
    for i = 1, #ys do
      if not less(el, ys[i]) then
        before = before + 1
      else
        local moved = redis.call('LPOP', k, before)
        redis.call('LPUSH', k, el)
        local back = {}
        for j = #moved, 1, -1 do back[#back + 1] = moved[j] end
        push_all('LPUSH', k, back)
        return
      end
    end
  end
end

-- Removes el from list k, kept in ascending order by less (see sorted_insert): O(1) at either
-- end; elsewhere a binary search (LINDEX is cheap) finds its place and LREM scans from the
-- nearer end. Returns 1 if it was there, else 0.
local function sorted_remove(k, el, less)
  local head = redis.call('LINDEX', k, 0)
  if not head then return 0 end
  if head == el then
    redis.call('LPOP', k)
    return 1
  end
  if redis.call('LINDEX', k, -1) == el then
    redis.call('RPOP', k)
    return 1
  end
  local n = redis.call('LLEN', k)
  local lo, hi = 1, n - 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if less(redis.call('LINDEX', k, mid), el) then lo = mid + 1 else hi = mid end
  end
  return redis.call('LREM', k, lo < n / 2 and 1 or -1, el)
end

local function str_less(a, b) return a < b end

-- A tenant's list of task ids (ids sort by creation time): what ListTasks pages through.
local function tenant_add(tenant, id)
  sorted_insert(tnkey(tenant), id, str_less)
end
local function tenant_remove(tenant, id)
  -- Tasks mostly expire in the order they were made: the oldest is usually at the head.
  sorted_remove(tnkey(tenant), id, str_less)
end

-- ---- what the leader visits (docs/fairness.md) ----
-- The leader's loops visit only the queues these global indexes name, so their cost follows the
-- queues with work, not every queue that ever had a task:
-- - P:ready SET: queues that may have QUEUED tasks (a superset: ready_add adds, and a queue
--   leaves when a claim or the dispatcher finds it has none: idle.lua). Each such queue's SET
--   P:{Q}:lanes names the tenants with QUEUED tasks in it (exact: see ready lists), so the
--   dispatcher can take turns by tenant.
-- - P:due, P:lease, P:reap ZSETs: queue -> a time at or before which its earliest delayed or
--   retry-wait task is due, its earliest lease runs out, its earliest finished task expires.
--   Every write that may bring that time forward lowers the score (index_at, ZADD LT); the
--   leader's pass over a queue sets it to the true next time (index_next).
local READY = P .. ':ready'
local function index_at(name, at, queue)
  redis.call('ZADD', P .. ':' .. name, 'LT', at, queue or Q)
end
-- After a pass over the queue's set `k`: its next time is the set's lowest score (none: the
-- queue leaves the index).
local function index_next(name, k)
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', P .. ':' .. name, Q)
  else
    redis.call('ZADD', P .. ':' .. name, first[2], Q)
  end
end

-- ---- tenants' unfinished tasks (quotas: docs/fairness.md) ----
-- P:tq:<tenant> HASH: queue -> how many of the tenant's tasks in it are not finished (QUEUED,
-- DELAYED, RUNNING, RETRY_WAIT); field '*' (no queue name has one) -> their total. A queue's
-- field exists while its count is above 0, so HLEN - 1 is how many queues the tenant uses.
local function tqkey(tenant) return P .. ':tq:' .. tenant end
local function tq_add(tenant, n, queue)
  local k = tqkey(tenant)
  if redis.call('HINCRBY', k, queue or Q, n) <= 0 then redis.call('HDEL', k, queue or Q) end
  -- Below 0 only for tasks made before the count existed: start again from nothing.
  if redis.call('HINCRBY', k, '*', n) <= 0 then redis.call('DEL', k) end
end

-- ---- ready lists ----
-- A queue's QUEUED tasks are in lanes, one per tenant, and each lane in one list per priority,
-- `ready:<priority>:<tenant>`, each in the order of (enqueue time, id). Within a lane the
-- dispatch order merges the four lists by (enqueue time - (priority - 1) * AGING, id): see
-- task-store.ts readyScore; across lanes the dispatcher takes turns by tenant
-- (docs/fairness.md). P:{Q}:lanes holds the tenants whose lanes are not empty. The enqueue time
-- is hash field `e`, or `c` when absent.

local enq_memo = {}
local function enq_of(id)
  local v = enq_memo[id]
  if not v then
    local f = redis.call('HMGET', tkey(id), 'e', 'c')
    v = tonumber(f[1] or f[2]) or 0
    enq_memo[id] = v
  end
  return v
end

local function ready_less(a, b)
  local ea, eb = enq_of(a), enq_of(b)
  if ea ~= eb then return ea < eb end
  return a < b
end

-- Whether tenant `lane`'s lane of the queue is empty.
local function lane_empty(lane)
  for p = 1, 4 do
    if redis.call('LLEN', readyk(p, lane)) > 0 then return false end
  end
  return true
end

-- Whether the queue has no QUEUED task (lane '' checked too: lists from before lanes).
local function ready_empty()
  return redis.call('SCARD', LANES) == 0 and lane_empty('')
end

-- Every lane of the queue that may hold QUEUED tasks: P:{Q}:lanes, and lane '' (lists from
-- before lanes) whether listed or not.
local function all_lanes()
  local lanes = redis.call('SMEMBERS', LANES)
  for _, lane in ipairs(lanes) do
    if lane == '' then return lanes end
  end
  lanes[#lanes + 1] = ''
  return lanes
end

-- The queue has no QUEUED task (left): it leaves P:ready.
local function ready_forget()
  redis.call('SREM', READY, Q)
  redis.call('DEL', LANES)
end

-- After tasks left tenant `lane`'s lane: an empty lane leaves P:{Q}:lanes, and a queue with no
-- QUEUED task left leaves P:ready.
local function lane_check(lane)
  if lane_empty(lane) then
    redis.call('SREM', LANES, lane)
    if ready_empty() then ready_forget() end
  end
end

-- Puts task `id` of `tenant`, QUEUED at `enq` (ms) with priority `pri`, into its place in its
-- tenant's lane, and lists lane and queue (P:{Q}:lanes, P:ready). The caller writes `enq` to the
-- hash (field `e`, omitted when equal to `c`).
-- (ready_insert puts it in its list only, for callers that list lanes once for many tasks.)
local function ready_insert(id, enq, pri, lane)
  enq_memo[id] = tonumber(enq)
  sorted_insert(readyk(tonumber(pri) or DEF_PRI, lane), id, ready_less)
end
local function ready_index(lane)
  redis.call('SADD', LANES, lane)
  redis.call('SADD', READY, Q)
end
local function ready_add(id, enq, pri, tenant)
  ready_insert(id, enq, pri, tenant or '')
  ready_index(tenant or '')
end

-- Takes task `id` (still with its hash) of `tenant` out of its ready list (lane_check follows);
-- returns 1 if it was there, else 0.
local function ready_remove(id, pri, tenant)
  local n = sorted_remove(readyk(tonumber(pri) or DEF_PRI, tenant), id, ready_less)
  lane_check(tenant or '')
  return n
end

-- Takes the ids in set `ids` (id -> true; `n` of them) out of the ready list of priority `pri`
-- of lane `lane` in one pass from the head: reads the list up to the last of them (in growing chunks, starting
-- with n elements: claimed tasks are usually the first ones) and writes that prefix back
-- without them. Cheaper than one LREM per id when tasks that stay (blocked by their
-- concurrency key, or of a type no worker takes) sit in front of the claimed ones.
local function ready_remove_many(pri, ids, n, lane)
  local k = readyk(pri, lane)
  if n == 1 then
    for id in pairs(ids) do redis.call('LREM', k, 1, id) end
    return
  end
  local kept, pos, chunk = {}, 0, n
  local limit = n + 10000
  while n > 0 and pos < limit do
    local xs = redis.call('LRANGE', k, pos, pos + chunk - 1)
    if #xs == 0 then break end
    for _, x in ipairs(xs) do
      if ids[x] then
        ids[x] = nil
        n = n - 1
      else
        kept[#kept + 1] = x
      end
    end
    pos = pos + #xs
    chunk = math.min(chunk * 2, 1024)
  end
  redis.call('LTRIM', k, pos, -1)
  local back = {}
  for j = #kept, 1, -1 do back[#back + 1] = kept[j] end
  push_all('LPUSH', k, back)
  -- Any not found in the first `limit` elements (further back than any claim takes them).
  if n > 0 then
    for id in pairs(ids) do redis.call('LREM', k, 1, id) end
  end
end

-- The task's error as stored in field `x` and in events: {code, message, retryable}.
local function err_json(code, message, retryable)
  return '{"code":' .. cjson.encode(code) .. ',"message":' .. cjson.encode(message) ..
    ',"retryable":' .. (retryable and 'true' or 'false') .. '}'
end

-- ---- events ----
-- Field `q` is the task's last event number (absent: 1, the submit event, which is never
-- stored: task-codec.ts rebuilds it from fields c and r). Events 2..`qe` are in the list
-- P:{Q}:ev:<id> (capped: the oldest are trimmed). Events qe+1..q are implied by the hash and
-- not stored (absent qe: 1): the claim of the current attempt (QUEUED -> RUNNING at `b` by `w`,
-- attempt `a`) and the end of that attempt (RUNNING -> `s` at `f`, error `x`). So a task that
-- runs once and ends has no event list at all. Any other event first writes the implied ones
-- to the list (flush_events, while the hash still holds what they were built from), then
-- itself. task-codec.ts impliedEntries rebuilds them exactly as flush_events writes them.

local function push_events(id, entries)
  local ek = evkey(id)
  local len = redis.call('RPUSH', ek, unpack(entries))
  if len > MAX_EVENTS then redis.call('LTRIM', ek, -MAX_EVENTS, -1) end
end

local function flush_events(id, tk)
  local f = redis.call('HMGET', tk, 'q', 'qe', 's', 'a', 'w', 'b', 'f', 'x')
  local q, qe = tonumber(f[1]) or 1, tonumber(f[2]) or 1
  if q <= qe then return end
  local st = tonumber(f[3])
  local att = f[4] or '0'
  local es = {}
  if q - qe >= 2 or st == RUNNING then
    es[#es + 1] = '{"n":' .. (qe + 1) .. ',"t":' .. (f[6] or '0') .. ',"k":"s","f":1,"s":3,"a":' .. att ..
      ',"w":' .. cjson.encode(f[5] or '') .. '}'
  end
  if is_terminal(st) then
    es[#es + 1] = '{"n":' .. q .. ',"t":' .. (f[7] or '0') .. ',"k":"s","f":3,"s":' .. st .. ',"a":' .. att ..
      (f[8] and (',"e":' .. f[8]) or '') .. '}'
  end
  if #es > 0 then push_events(id, es) end
  redis.call('HSET', tk, 'qe', q)
end

-- Appends one event to the task's list and wakes watchers. `body` is the JSON members after
-- seq and time, e.g. '"k":"s","f":1,"s":3,"a":1'. Callers flush_events before they change the
-- hash; the call here only covers a caller that had nothing to change first.
local function append_event(id, tk, body)
  flush_events(id, tk)
  local seq = (tonumber(redis.call('HGET', tk, 'q')) or 1) + 1
  redis.call('HSET', tk, 'q', seq, 'qe', seq)
  push_events(id, {'{"n":' .. seq .. ',"t":' .. NOW_S .. ',' .. body .. '}'})
  redis.call('PUBLISH', P .. ':ev:' .. id, seq)
  return seq
end

-- A status change event. `extra` holds more members (starting with a comma) or is ''.
local function status_event(id, tk, from, to, att, extra)
  append_event(id, tk, '"k":"s","f":' .. from .. ',"s":' .. to .. ',"a":' .. att .. extra)
end

-- Ends a task: terminal status, finished time, kept in `done` until its result TTL passes;
-- FAILED and CANCELLED also enter the dead-letter set; its tenant has one unfinished task less. The caller has removed it from the
-- ready list, delayed and running sets. The end of a running attempt is an implied event
-- unless events other than its claim came after the last stored one.
local function finish(id, tk, from, to, att, ttl, err, done_key, dead_key)
  local f = redis.call('HMGET', tk, 'q', 'qe', 'n')
  if f[3] then tq_add(f[3], -1) end
  local q, qe = tonumber(f[1]) or 1, tonumber(f[2]) or 1
  local implied = from == RUNNING and q - qe <= 1
  if not implied then flush_events(id, tk) end
  local set = {'s', to, 'f', NOW_S}
  if implied then
    set[#set + 1] = 'q'
    set[#set + 1] = q + 1
  end
  if err then
    set[#set + 1] = 'x'
    set[#set + 1] = err
    redis.call('HDEL', tk, 'cx')
  else
    redis.call('HDEL', tk, 'cx', 'x')
  end
  redis.call('HSET', tk, unpack(set))
  local expires = NOW + (tonumber(ttl) or DEF_TTL)
  redis.call('ZADD', done_key, expires, id)
  index_at('reap', expires)
  if to ~= SUCCEEDED then redis.call('ZADD', dead_key, NOW, id) end
  if implied then
    redis.call('PUBLISH', P .. ':ev:' .. id, q + 1)
  else
    status_event(id, tk, from, to, att, err and (',"e":' .. err) or '')
  end
end

-- Per-key concurrency. The queue's hash `cc` (a KEYS entry of the scripts that need it) maps a
-- concurrency key to the number of RUNNING tasks of this queue with that key (hash field `ck`);
-- a field is deleted when its count reaches 0. Every transition into RUNNING (claim) calls
-- cc_take and every transition out of it (complete, requeue_running) calls cc_release, so the
-- count stays exact; it never goes below 0 even if it somehow drifted.
local function cc_take(k_cc, ck)
  if ck then redis.call('HINCRBY', k_cc, ck, 1) end
end
local function cc_release(k_cc, ck)
  if ck and redis.call('HINCRBY', k_cc, ck, -1) <= 0 then redis.call('HDEL', k_cc, ck) end
end
-- Whether a task with key ck and limit cl (hash fields, false when absent) may not start now:
-- `extra` more tasks of that key are about to start (peek's look-ahead), on top of the count.
local function cc_blocked(k_cc, ck, cl, extra)
  local limit = tonumber(cl)
  if not ck or not limit or limit <= 0 then return false end
  return (tonumber(redis.call('HGET', k_cc, ck)) or 0) + extra >= limit
end

-- Puts a RUNNING task back in line at its old enqueue time (the front of its priority).
-- Instead it ends CANCELLED if a cancel was requested meanwhile, or FAILED with
-- TOO_MANY_REQUEUES (dead-lettered) when it was already re-queued max_rq times: a task that
-- keeps killing its worker must not go round forever. Field `rq` counts the re-queues.
-- k: {running, done, dead, cc} keys. Returns true when re-queued.
-- The caller has checked that the task is RUNNING at attempt att.
local function requeue_running(id, tk, att, code, message, max_rq, k)
  local f = redis.call('HMGET', tk, 'p', 'e', 'cx', 'l', 'ck', 'rq', 'c', 'n')
  redis.call('ZREM', k.running, id)
  cc_release(k.cc, f[5])
  if f[3] then
    finish(id, tk, RUNNING, CANCELLED, att, f[4], err_json('CANCELLED', f[3], false), k.done, k.dead)
    return false
  end
  local rq = tonumber(f[6]) or 0
  if rq >= max_rq then
    local msg = 're-queued ' .. rq .. ' times; last: ' .. message
    finish(id, tk, RUNNING, FAILED, att, f[4], err_json('TOO_MANY_REQUEUES', msg, false), k.done, k.dead)
    return false
  end
  flush_events(id, tk)
  local err = err_json(code, message, true)
  redis.call('HSET', tk, 's', QUEUED, 'x', err, 'rq', rq + 1)
  ready_add(id, f[2] or f[7] or NOW_S, f[1], f[8])
  status_event(id, tk, RUNNING, QUEUED, att, ',"e":' .. err)
  return true
end

-- The spec JSON of a task whose hash field `d` is `d` ('' = in the key d:<id>; false = none).
local function spec_of(qp, id, d)
  if d == '' then return redis.call('GET', qp .. 'd:' .. id) end
  return d
end

-- One task as scripts return it: {id, queue, HGETALL, spec JSON or false, result JSON or false}.
-- Fields `d` (spec) and `o` (result) hold the JSON itself, or '' when it is too long for the
-- hash and has a key of its own.
local function load_task(queue, id)
  local qp = qprefix(queue)
  local h = redis.call('HGETALL', qp .. 't:' .. id)
  if #h == 0 then return false end
  local spec, res = false, false
  for i = 1, #h, 2 do
    local name = h[i]
    if name == 'd' then spec = h[i + 1] elseif name == 'o' then res = h[i + 1] end
  end
  spec = spec_of(qp, id, spec)
  if res == '' then res = redis.call('GET', qp .. 'r:' .. id) end
  return {id, queue, h, spec, res}
end
