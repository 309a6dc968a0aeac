-- finish: records submitted ticks. KEYS: 1 P:sch:pend.
-- ARGV[3..] triples: ref, tick ms, task id ('' when no task could be made from the template).
for i = 3, #ARGV, 3 do
  local ref, tick, task_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('ZREM', KEYS[1], ref .. ':' .. tick)
  record_last(ref, tick, task_id)
end
return 1
