-- idle: the dispatcher found nothing to claim in queue Q. Q leaves P:ready if it has no QUEUED
-- task (and forgets its tenants), or is paused (it keeps them: resuming lists it again, see
-- pause.lua). A task queued since the dispatcher looked keeps Q listed: this runs atomically.
-- KEYS: 1 paused flag
-- Returns 1 when Q left P:ready, else 0.
if ready_empty() then
  ready_forget()
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SREM', READY, Q)
  return 1
end
return 0
