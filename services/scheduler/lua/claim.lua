-- claim: hands QUEUED tasks of queue Q to workers. A task not (or no longer) in the ready set
-- is skipped, so two claims of the same task cannot both succeed. Nothing is claimed while the
-- queue is paused. A task whose concurrency key is at the task's limit (see cc_blocked) is
-- skipped too and stays in the ready set at its place; items are taken in the order given, so
-- of several tasks of one key the earlier ones win the free places.
-- KEYS: 1 ready, 2 running, 3 concurrency counts, 4 paused flag
-- ARGV[6] lease ms; ARGV[7..]: per task 2 values: id, worker id.
-- Returns per claimed task: {id, attempt, type, tenant, spec JSON, traceparent ('' = none),
-- ms when it became ready ('' = unknown)}.
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local lease = NOW + tonumber(ARGV[6])
local out = {}
for i = 7, #ARGV, 2 do
  local id, wid = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], id) then
    local tk = tkey(id)
    local f = redis.call('HMGET', tk, 'st', 'att', 'typ', 'ten', 'ck', 'cl', 'tp', 'enq')
    if tonumber(f[1]) ~= QUEUED then
      -- The ready set holds only QUEUED tasks; anything else found there is dropped.
      redis.call('ZREM', KEYS[1], id)
    elseif not cc_blocked(KEYS[3], f[5], f[6], 0) then
      redis.call('ZREM', KEYS[1], id)
      local att = (tonumber(f[2]) or 0) + 1
      redis.call('HSET', tk, 'st', RUNNING, 'att', att, 'wk', wid, 'sta', NOW_S, 'lease', lease)
      redis.call('HDEL', tk, 'prog', 'pmsg')
      redis.call('ZADD', KEYS[2], lease, id)
      cc_take(KEYS[3], f[5])
      status_event(id, tk, QUEUED, RUNNING, att, ',"w":' .. cjson.encode(wid))
      out[#out + 1] = {id, att, f[3], f[4], redis.call('GET', dkey(id)), f[7] or '', f[8] or ''}
    end
  end
end
return out
