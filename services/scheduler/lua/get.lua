-- get: tasks by id, in any queue (read-only).
-- KEYS: 1 P:queues
-- ARGV[6..] ids. Returns per id a task (see load_task) or false.
local out = {}
for i = 6, #ARGV do
  local q = queue_of(ARGV[i])
  out[#out + 1] = q and load_task(q, ARGV[i]) or false
end
return out
