-- claim: hands QUEUED tasks of queue Q to workers. A task not (or no longer) in the ready set
-- is skipped, so two claims of the same task cannot both succeed.
-- KEYS: 1 ready, 2 running
-- ARGV[6] lease ms; ARGV[7..]: per task 2 values: id, worker id.
-- Returns per claimed task: {id, attempt, type, tenant, spec JSON}.
local lease = NOW + tonumber(ARGV[6])
local out = {}
for i = 7, #ARGV, 2 do
  local id, wid = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZREM', KEYS[1], id)
    local tk = tkey(id)
    local f = redis.call('HMGET', tk, 'st', 'att', 'typ', 'ten')
    -- The ready set holds only QUEUED tasks; anything else found there is dropped.
    if tonumber(f[1]) == QUEUED then
      local att = (tonumber(f[2]) or 0) + 1
      redis.call('HSET', tk, 'st', RUNNING, 'att', att, 'wk', wid, 'sta', NOW_S, 'lease', lease)
      redis.call('HDEL', tk, 'prog', 'pmsg')
      redis.call('ZADD', KEYS[2], lease, id)
      status_event(id, tk, QUEUED, RUNNING, att, ',"w":' .. cjson.encode(wid))
      out[#out + 1] = {id, att, f[3], f[4], redis.call('GET', dkey(id))}
    end
  end
end
return out
