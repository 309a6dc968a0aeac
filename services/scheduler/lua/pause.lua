-- pause: pauses (ARGV[7] '1') or resumes (ARGV[7] '0') queue Q, and lists it among the queues.
-- KEYS: 1 paused flag, 2 P:queues
-- ARGV[6] Q's tag.
register_queue(Q, ARGV[6])
if ARGV[7] == '1' then
  redis.call('SET', KEYS[1], '1')
else
  redis.call('DEL', KEYS[1])
  -- The dispatcher drops a paused queue from P:ready (idle.lua): list it again.
  if not ready_empty() then redis.call('SADD', READY, Q) end
end
return 1
