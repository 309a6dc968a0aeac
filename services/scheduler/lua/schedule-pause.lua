-- pause: takes a schedule off the due set. KEYS: 1 its hash, 2 P:sch:due. ARGV[3] ref.
-- Returns 0 when the schedule does not exist, else 1 (pausing a paused schedule is a no-op).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'paused', '1')
redis.call('HDEL', KEYS[1], 'next')
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
