-- report: progress updates and log lines of running attempts (fenced by attempt).
-- KEYS: 1 running (unused: names the queue's slot)
-- ARGV[6..]: per item 5 values: kind ('p' progress | 'l' log), id, attempt, progress, text.
-- Returns how many items were applied.
local n = 0
for i = 6, #ARGV, 5 do
  local kind, id, att = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'a')
  if tonumber(f[1]) == RUNNING and f[2] == att then
    flush_events(id, tk)
    local text = ARGV[i + 4]
    if kind == 'p' then
      redis.call('HSET', tk, 'g', ARGV[i + 3])
      if text == '' then redis.call('HDEL', tk, 'gm') else redis.call('HSET', tk, 'gm', text) end
      local m = text == '' and '' or (',"m":' .. cjson.encode(text))
      append_event(id, tk, '"k":"p","a":' .. att .. ',"p":' .. ARGV[i + 3] .. m)
    else
      append_event(id, tk, '"k":"l","a":' .. att .. ',"m":' .. cjson.encode(text))
    end
    n = n + 1
  end
end
return n
