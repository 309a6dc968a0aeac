-- resume: puts a paused schedule back on the due set at ARGV[4] ('' = it never fires again).
-- KEYS: 1 its hash, 2 P:sch:due. ARGV[3] ref.
-- Returns 0 when the schedule does not exist, else 1 (resuming a running schedule is a no-op, so
-- two concurrent resumes cannot both move `next`).
local paused = redis.call('HGET', KEYS[1], 'paused')
if not paused then return 0 end
if paused == '1' then
  redis.call('HSET', KEYS[1], 'paused', '0')
  if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[1], 'next', ARGV[4])
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  end
end
return 1
