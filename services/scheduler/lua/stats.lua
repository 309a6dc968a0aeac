-- stats: depths of queue Q (read-only).
-- KEYS: 1 running, 2 delayed, 3 dead, 4 retry-wait counter, 5 paused flag
-- Returns {queued, running, delayed + retry wait, retry wait, dead, oldest enqueue ms or -1,
-- 1 if paused else 0}.
-- Each ready list is in order of enqueue time, so the oldest queued task is one of their heads.
local queued, oldest = 0, -1
for _, lane in ipairs(all_lanes()) do
  for p = 1, 4 do
    local k = readyk(p, lane)
    local n = redis.call('LLEN', k)
    if n > 0 then
      queued = queued + n
      local enq = enq_of(redis.call('LINDEX', k, 0))
      if oldest < 0 or enq < oldest then oldest = enq end
    end
  end
end
return {
  queued, redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]),
  tonumber(redis.call('GET', KEYS[4]) or '0'), redis.call('ZCARD', KEYS[3]), oldest,
  redis.call('EXISTS', KEYS[5]),
}
