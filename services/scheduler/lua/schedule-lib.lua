-- taskmesh schedules: helpers prepended to every schedule script (see schedules.ts).
--
-- Every script gets ARGV[1] = key prefix P and ARGV[2] = now (ms, as a string); its own
-- arguments start at ARGV[3]. Numbers are passed back to Redis as the strings they arrived as:
-- a Lua number would be formatted with 14 significant digits and lose milliseconds.
--
-- Keys: P:sch:s:<tenant>:<id> HASH one schedule; P:sch:due ZSET refs ("<tenant>:<id>") by next
-- run ms; P:sch:pend ZSET in-flight ticks ("<tenant>:<id>:<tick ms>") by lease deadline;
-- P:sch:tn:<tenant> ZSET (scores 0) of the tenant's schedule ids.

local P = ARGV[1]
local NOW_S = ARGV[2]
local NOW = tonumber(NOW_S)

local function skey(ref) return P .. ':sch:s:' .. ref end

-- Records the outcome of tick `tick` (ms string) unless the schedule is gone or a later tick
-- was already recorded (two ticks of one schedule may finish out of order).
local function record_last(ref, tick, task_id)
  if task_id == '' then return end
  local h = skey(ref)
  if redis.call('EXISTS', h) == 0 then return end
  local lt = redis.call('HGET', h, 'ltick')
  if lt and tonumber(lt) > tonumber(tick) then return end
  redis.call('HSET', h, 'last', NOW_S, 'ltid', task_id, 'ltick', tick)
end
