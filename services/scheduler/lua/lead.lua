-- lead: a newly elected leader takes queue Q over. It fences the queue with its epoch (from now
-- on an older leader's claims, re-queues and lease expiries fail: lib.lua fence) and restarts
-- the lease of every running attempt at NOW + lease ms (while no leader ran, nobody could renew
-- them; the workers' hellos and re-sent results reach the new leader within that time).
-- It also moves tasks queued before lanes existed into their tenants' lanes, and sets the
-- queue's entries in the leader's indexes (lib.lua: P:ready, P:due, P:lease, P:reap) from the
-- queue itself, so that they hold whatever an older version or a lost write
-- left out; a queue with nothing left is put in P:reap due now, and the first reap removes it.
-- KEYS: 1 running, 2 epoch, 3 delayed, 4 done
-- ARGV[6] lease ms, ARGV[7] the leader's epoch, ARGV[8] until when it leads (ms).
-- Returns how many leases were restarted.
local fenced = fence(KEYS[2], ARGV[7], ARGV[8])
if fenced then return fenced end
local until_ms = NOW + tonumber(ARGV[6])
local late = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. until_ms)
for i = 1, #late, 1000 do
  local args = {}
  for j = i, math.min(i + 999, #late) do
    args[#args + 1] = until_ms
    args[#args + 1] = late[j]
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(args))
end
index_next('lease', KEYS[1])
index_next('due', KEYS[3])
index_next('reap', KEYS[4])
-- Tasks queued before lanes existed (lane '', lib.lua ready lists) move to their tenants' lanes,
-- newest first, each at the head of its lane: they are older than anything queued there since.
for p = 1, 4 do
  local legacy = readyk(p, '')
  for _ = 1, 100000 do
    local id = redis.call('RPOP', legacy)
    if not id then break end
    local tenant = redis.call('HGET', tkey(id), 'n')
    if tenant then
      sorted_insert(readyk(p, tenant), id, ready_less)
      redis.call('SADD', LANES, tenant)
    end
  end
end
-- (At most 100,000 per priority at a time: the rest stay in lane '' until the next leader.)
if lane_empty('') then redis.call('SREM', LANES, '') else redis.call('SADD', LANES, '') end
if not ready_empty() then
  redis.call('SADD', READY, Q)
elseif redis.call('ZCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[3]) == 0 and redis.call('ZCARD', KEYS[4]) == 0 then
  index_at('reap', 0)
end
return #late
