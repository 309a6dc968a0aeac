-- requeue: running attempts whose worker is gone go back to the ready set (fenced by attempt).
-- KEYS: 1 ready, 2 running, 3 done, 4 dead
-- ARGV[6] error code, ARGV[7] message; ARGV[8..]: per task 2 values: id, attempt.
-- Returns how many were re-queued (cancel-requested ones end as CANCELLED instead).
local n = 0
for i = 8, #ARGV, 2 do
  local id, att = ARGV[i], ARGV[i + 1]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'st', 'att', 'pri', 'enq', 'cxl', 'ttl')
  if tonumber(f[1]) == RUNNING and f[2] == att then
    if requeue_running(id, tk, att, f[3], f[4], f[5], f[6], ARGV[6], ARGV[7], KEYS[1], KEYS[2], KEYS[3], KEYS[4]) then
      n = n + 1
    end
  end
end
return n
