-- locate: the queue of each task id (read-only).
-- KEYS: 1 P:queues
-- ARGV[6..] ids. Returns per id its queue's name, or false when no queue can hold it.
local out = {}
for i = 6, #ARGV do
  out[#out + 1] = queue_of(ARGV[i])
end
return out
