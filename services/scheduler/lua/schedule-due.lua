-- due: reads up to ARGV[3] schedules due at now, with what the caller needs to compute each
-- one's following run (read-only). KEYS: 1 P:sch:due.
-- Returns flat {ref, next, cron, interval ms, time zone, ...}; '' where a field is absent.
local refs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_S, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, ref in ipairs(refs) do
  local v = redis.call('HMGET', skey(ref), 'next', 'cron', 'iv', 'tz')
  out[#out + 1] = ref
  for i = 1, 4 do out[#out + 1] = v[i] or '' end
end
return out
