-- renew: extends the leases of attempts that are still current (heartbeat).
-- KEYS: 1 running
-- ARGV[6] lease ms; ARGV[7..]: per task 2 values: id, attempt.
-- Returns the stale refs flattened: {id, attempt, id, attempt, ...}.
local lease = NOW + tonumber(ARGV[6])
local stale = {}
for i = 7, #ARGV, 2 do
  local id, att = ARGV[i], ARGV[i + 1]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'st', 'att')
  if tonumber(f[1]) == RUNNING and f[2] == att then
    redis.call('HSET', tk, 'lease', lease)
    redis.call('ZADD', KEYS[1], lease, id)
  else
    stale[#stale + 1] = id
    stale[#stale + 1] = att
  end
end
return stale
