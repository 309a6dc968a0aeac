-- stats: depths of queue Q (read-only).
-- KEYS: 1 ready, 2 running, 3 delayed, 4 dead, 5 retry-wait counter, 6 paused flag
-- ARGV[6] how many ready tasks to inspect for the oldest.
-- Returns {queued, running, delayed + retry wait, retry wait, dead, oldest enqueue ms or -1,
-- 1 if paused else 0}.
-- The oldest queued task has the smallest `enq`, and every ready score is within
-- [enq - 3 * AGING, enq], so it is among the tasks scored up to the head's score + 3 * AGING.
local oldest = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[1] then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], head[2], tonumber(head[2]) + 3 * AGING, 'LIMIT', 0, tonumber(ARGV[6]))
  for _, id in ipairs(ids) do
    local enq = tonumber(redis.call('HGET', tkey(id), 'enq'))
    if enq and (oldest < 0 or enq < oldest) then oldest = enq end
  end
end
return {
  redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
  tonumber(redis.call('GET', KEYS[5]) or '0'), redis.call('ZCARD', KEYS[4]), oldest,
  redis.call('EXISTS', KEYS[6]),
}
