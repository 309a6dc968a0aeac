-- events: a task's event entries with seq > from, with its state (read-only).
-- KEYS: 1 P:ix
-- ARGV[6] id, ARGV[7] from seq, ARGV[8] '1' to include the spec and result.
-- Returns false for an unknown task, else {{id, queue, HGETALL, spec or false, result or false}, entries}.
local id = ARGV[6]
local q = redis.call('HGET', KEYS[1], id)
if not q then return false end
local qp = qprefix(q)
local h = redis.call('HGETALL', qp .. 't:' .. id)
if #h == 0 then return false end
local ek = qp .. 'ev:' .. id
local start = 0
local from = tonumber(ARGV[7])
if from > 0 then
  -- Sequence numbers are contiguous, so the first entry's number locates `from`.
  local first = redis.call('LINDEX', ek, 0)
  local n1 = first and tonumber(string.match(first, '^{"n":(%d+)'))
  if n1 and from - n1 + 1 > 0 then start = from - n1 + 1 end
end
local spec, res = false, false
if ARGV[8] == '1' then spec = redis.call('GET', qp .. 'd:' .. id) end
res = redis.call('GET', qp .. 'r:' .. id)
return {{id, q, h, spec, res}, redis.call('LRANGE', ek, start, -1)}
