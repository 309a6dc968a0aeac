-- peek: the first ready tasks in dispatch order that claim would take now, without claiming
-- them (read-only). Nothing while the queue is paused. Tasks whose concurrency key is at their
-- limit are stepped over (they stay where they are); the count of a key includes the tasks of
-- that key already picked by this call, so claiming everything returned keeps every limit.
-- Stepping over is bounded: after `max skip` blocked tasks the call returns what it has, so a
-- long run of blocked tasks at the head costs at most that much work per call.
-- KEYS: 1 ready, 2 concurrency counts, 3 paused flag
-- ARGV[6] limit, ARGV[7] max skip. Returns flattened {id, type, affinity key, ...}.
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local limit, max_skip = tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {}
local found, skipped, pos = 0, 0, 0
local picked = {}
while found < limit and skipped <= max_skip do
  local page = limit - found
  local ids = redis.call('ZRANGE', KEYS[1], pos, pos + page - 1)
  if #ids == 0 then break end
  pos = pos + #ids
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', tkey(id), 'typ', 'aff', 'ck', 'cl')
    local ck = f[3]
    if ck and cc_blocked(KEYS[2], ck, f[4], picked[ck] or 0) then
      skipped = skipped + 1
      if skipped > max_skip then break end
    else
      if ck then picked[ck] = (picked[ck] or 0) + 1 end
      out[#out + 1] = id
      out[#out + 1] = f[1] or ''
      out[#out + 1] = f[2] or ''
      found = found + 1
    end
  end
end
return out
