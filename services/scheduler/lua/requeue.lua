-- requeue: running attempts whose worker is gone go back in line (fenced by attempt).
-- Leader-only: fenced by epoch (lib.lua fence).
-- KEYS: 1 running, 2 done, 3 dead, 4 concurrency counts, 5 epoch
-- ARGV[6] error code, ARGV[7] message, ARGV[8] max re-queues per task, ARGV[9] the caller's
-- epoch, ARGV[10] until when it leads (ms); ARGV[11..]: per task 2 values: id, attempt.
-- Returns how many were re-queued (cancel-requested ones end CANCELLED instead, and ones already
-- re-queued max times end FAILED: see requeue_running).
local fenced = fence(KEYS[5], ARGV[9], ARGV[10])
if fenced then return fenced end
local k = {running = KEYS[1], done = KEYS[2], dead = KEYS[3], cc = KEYS[4]}
local max_rq = tonumber(ARGV[8])
local n = 0
for i = 11, #ARGV, 2 do
  local id, att = ARGV[i], ARGV[i + 1]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'a')
  if tonumber(f[1]) == RUNNING and f[2] == att then
    if requeue_running(id, tk, att, ARGV[6], ARGV[7], max_rq, k) then
      n = n + 1
    end
  end
end
return n
