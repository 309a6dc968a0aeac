-- claim: hands QUEUED tasks of queue Q to workers. A task not (or no longer) QUEUED is skipped,
-- so two claims of the same task cannot both succeed. Nothing is claimed while the queue is
-- paused. A task whose concurrency key is at the task's limit (see cc_blocked) is skipped too
-- and stays in line at its place; items are taken in the order given, so of several tasks of
-- one key the earlier ones win the free places. A task is QUEUED exactly while it is in its
-- ready list: the claimed ones leave their lists together at the end (ready_remove_many).
-- The queue enters P:lease; emptied lanes leave P:{Q}:lanes, and the queue P:ready when nothing
-- QUEUED is left (lib.lua indexes).
-- Leader-only: fenced by epoch (lib.lua fence).
-- KEYS: 1 running, 2 concurrency counts, 3 paused flag, 4 epoch
-- ARGV[6] lease ms, ARGV[7] the caller's epoch, ARGV[8] until when it leads (ms);
-- ARGV[9..]: per task 2 values: id, worker id.
-- Returns per claimed task: {id, attempt, type, tenant, spec JSON (false = none), traceparent
-- ('' = none), ms when it became ready}.
-- The claim is an implied event (see lib.lua): it only bumps the event number.
local fenced = fence(KEYS[4], ARGV[7], ARGV[8])
if fenced then return fenced end
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local lease = NOW + tonumber(ARGV[6])
local out = {}
-- The claimed tasks by (priority, lane), to leave their lists together.
local leaving = {}
for i = 9, #ARGV, 2 do
  local id, wid = ARGV[i], ARGV[i + 1]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'a', 'y', 'n', 'ck', 'cl', 'tp', 'e', 'c', 'p', 'd', 'q', 'qe')
  if tonumber(f[1]) == QUEUED and not cc_blocked(KEYS[2], f[5], f[6], 0) then
    local p, lane = tonumber(f[10]) or DEF_PRI, f[4] or ''
    local g = leaving[p .. ':' .. lane]
    if not g then
      g = {pri = p, lane = lane, ids = {}, n = 0}
      leaving[p .. ':' .. lane] = g
    end
    g.ids[id] = true
    g.n = g.n + 1
    local q = tonumber(f[12]) or 1
    if q ~= (tonumber(f[13]) or 1) then flush_events(id, tk) end
    local att = (tonumber(f[2]) or 0) + 1
    local seq = q + 1
    redis.call('HSET', tk, 's', RUNNING, 'a', att, 'w', wid, 'b', NOW_S, 'q', seq)
    redis.call('HDEL', tk, 'g', 'gm')
    redis.call('ZADD', KEYS[1], lease, id)
    cc_take(KEYS[2], f[5])
    redis.call('PUBLISH', P .. ':ev:' .. id, seq)
    out[#out + 1] = {id, att, f[3], f[4], spec_of(QP, id, f[11]), f[7] or '', f[8] or f[9]}
  end
end
local lanes = {}
for _, g in pairs(leaving) do
  ready_remove_many(g.pri, g.ids, g.n, g.lane)
  lanes[g.lane] = true
end
for lane in pairs(lanes) do lane_check(lane) end
if #out > 0 then index_at('lease', lease) end
return out
