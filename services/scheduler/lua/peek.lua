-- peek: the first ready tasks in dispatch order, without claiming them (read-only).
-- KEYS: 1 ready
-- ARGV[6] limit. Returns flattened {id, type, affinity key, ...}.
local out = {}
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1)
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', tkey(id), 'typ', 'aff')
  out[#out + 1] = id
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or ''
end
return out
