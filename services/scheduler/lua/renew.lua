-- renew: extends the leases of attempts that are still current (heartbeat). The lease deadline
-- is the task's score in the running set (nothing else keeps it).
-- KEYS: 1 running
-- ARGV[6] lease ms; ARGV[7..]: per task 2 values: id, attempt.
-- Returns the stale refs flattened: {id, attempt, id, attempt, ...}.
local lease = NOW + tonumber(ARGV[6])
local stale = {}
local renewed = false
for i = 7, #ARGV, 2 do
  local id, att = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', tkey(id), 's', 'a')
  if tonumber(f[1]) == RUNNING and f[2] == att then
    redis.call('ZADD', KEYS[1], lease, id)
    renewed = true
  else
    stale[#stale + 1] = id
    stale[#stale + 1] = att
  end
end
-- A shorter lease (live config) may bring the queue's next deadline forward.
if renewed then index_at('lease', lease) end
return stale
