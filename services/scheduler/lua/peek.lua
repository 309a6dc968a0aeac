-- peek: the first ready tasks in dispatch order that claim would take now, without claiming
-- them (read-only). Nothing while the queue is paused. The order merges the queue's four ready
-- lists (one per priority, each in order of enqueue time and id) by
-- (enqueue time - (priority - 1) * AGING, id): task-store.ts readyScore.
-- Tasks whose concurrency key is at their limit are stepped over (they stay where they are); the
-- count of a key includes the tasks of that key already picked by this call, so claiming
-- everything returned keeps every limit. Stepping over is bounded: after `max skip` blocked
-- tasks the call returns what it has, so a long run of blocked tasks at the head costs at most
-- that much work per call.
-- The tasks of one tenant's lane (lib.lua ready lists), or of every lane merged in that order.
-- KEYS: 1 concurrency counts, 2 paused flag
-- ARGV[6] limit, ARGV[7] max skip, ARGV[8] the lane's tenant ('*': every lane).
-- Returns flattened {id, type, affinity key, ...}.
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local limit, max_skip = tonumber(ARGV[6]), tonumber(ARGV[7])
local lanes = ARGV[8] == '*' and all_lanes() or {ARGV[8]}
-- Per list (lane and priority): the next candidates, read a page at a time (the first of
-- `limit`, then larger ones while blocked tasks are stepped over).
local lists = {}
for _, lane in ipairs(lanes) do
  for p = 1, 4 do
    lists[#lists + 1] = {key = readyk(p, lane), pri = p, pos = 0, buf = {}, i = 1, more = true, page = math.min(limit, 256)}
  end
end
local function head(j)
  local l = lists[j]
  local p = l.pri
  if l.i > #l.buf then
    if not l.more then return nil end
    local ids = redis.call('LRANGE', l.key, l.pos, l.pos + l.page - 1)
    l.more = #ids == l.page
    l.pos = l.pos + #ids
    l.page = math.min(l.page * 2, 256)
    l.buf, l.i = {}, 1
    for _, id in ipairs(ids) do
      local f = redis.call('HMGET', tkey(id), 'e', 'c', 'y', 'af', 'ck', 'cl')
      local enq = tonumber(f[1] or f[2]) or 0
      l.buf[#l.buf + 1] = {id = id, score = enq - (p - 1) * AGING, typ = f[3], aff = f[4], ck = f[5], cl = f[6]}
    end
    if #l.buf == 0 then return nil end
  end
  return l.buf[l.i]
end
local out = {}
local found, skipped = 0, 0
local picked = {}
while found < limit and skipped <= max_skip do
  local best, bp = nil, 0
  for j = #lists, 1, -1 do
    local c = head(j)
    if c and (not best or c.score < best.score or (c.score == best.score and c.id < best.id)) then
      best, bp = c, j
    end
  end
  if not best then break end
  lists[bp].i = lists[bp].i + 1
  local ck = best.ck
  if ck and cc_blocked(KEYS[1], ck, best.cl, picked[ck] or 0) then
    skipped = skipped + 1
  else
    if ck then picked[ck] = (picked[ck] or 0) + 1 end
    out[#out + 1] = best.id
    out[#out + 1] = best.typ or ''
    out[#out + 1] = best.aff or ''
    found = found + 1
  end
end
return out
