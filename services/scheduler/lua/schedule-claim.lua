-- claim: takes due ticks, each by compare-and-set on the schedule's `next`, so that however
-- many callers race with the same view of the due set, each tick is claimed exactly once.
-- KEYS: 1 P:sch:due, 2 P:sch:pend
-- ARGV[3] lease deadline ms of the claimed ticks; ARGV[4..] triples: ref, the `next` the caller
-- read (the tick), the following run it computed ('' = never again).
-- A claimed tick advances `next` (and the due score) and is recorded in pend until finish.lua;
-- if its claimer dies first, recover.lua hands it out again after the deadline.
-- Returns {ref, tick, tenant, task template JSON} per claimed tick.
local out = {}
for i = 4, #ARGV, 3 do
  local ref, tick, following = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local h = skey(ref)
  local v = redis.call('HMGET', h, 'next', 'paused', 'ten', 'task')
  if not v[3] or v[2] == '1' or not v[1] then
    -- Deleted, paused or never firing again: a stale due entry (the scripts never leave one,
    -- but a stale entry would otherwise be read on every tick).
    redis.call('ZREM', KEYS[1], ref)
  elseif v[1] and v[1] == tick and tonumber(tick) <= NOW then
    if following ~= '' then
      redis.call('HSET', h, 'next', following)
      redis.call('ZADD', KEYS[1], following, ref)
    else
      redis.call('HDEL', h, 'next')
      redis.call('ZREM', KEYS[1], ref)
    end
    redis.call('ZADD', KEYS[2], ARGV[3], ref .. ':' .. tick)
    out[#out + 1] = {ref, tick, v[3], v[4]}
  end
end
return out
