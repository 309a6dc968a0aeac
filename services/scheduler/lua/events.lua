-- events: a task's stored event entries with seq > from, with its state (read-only). The
-- caller adds the events the hash implies (lib.lua, task-codec.ts impliedEntries).
-- KEYS: 1 P:queues
-- ARGV[6] id, ARGV[7] from seq, ARGV[8] '1' to include the spec and result.
-- Returns false for an unknown task, else {{id, queue, HGETALL, spec or false, result or false}, entries}.
local id = ARGV[6]
local q = queue_of(id)
if not q then return false end
local qp = qprefix(q)
local h = redis.call('HGETALL', qp .. 't:' .. id)
if #h == 0 then return false end
local spec, res = false, false
for i = 1, #h, 2 do
  if h[i] == 'd' then spec = h[i + 1] elseif h[i] == 'o' then res = h[i + 1] end
end
local ek = qp .. 'ev:' .. id
local start = 0
local from = tonumber(ARGV[7])
if from > 0 then
  -- Sequence numbers are contiguous, so the first entry's number locates `from`.
  local first = redis.call('LINDEX', ek, 0)
  local n1 = first and tonumber(string.match(first, '^{"n":(%d+)'))
  if n1 and from - n1 + 1 > 0 then start = from - n1 + 1 end
end
if ARGV[8] == '1' then spec = spec_of(qp, id, spec) else spec = false end
if res == '' then res = redis.call('GET', qp .. 'r:' .. id) end
return {{id, q, h, spec, res}, redis.call('LRANGE', ek, start, -1)}
