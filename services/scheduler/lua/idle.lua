-- idle: the dispatcher found nothing to claim in tenant ARGV[6]'s lane of queue Q. The lane leaves
-- P:{Q}:lanes if it is empty, and Q leaves P:ready if it has no QUEUED task or is paused (a
-- paused queue keeps its lanes: resuming lists it again, see pause.lua). A task queued since the
-- dispatcher looked keeps them listed: this runs atomically.
-- KEYS: 1 paused flag
-- Returns 1 when the lane or the queue left, else 0.
local lane = ARGV[6]
if lane_empty(lane) then
  lane_check(lane)
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SREM', READY, Q)
  return 1
end
return 0
