-- create: stores a new schedule unless its id is taken or the tenant is at its limit.
-- KEYS: 1 P:sch:s:<tenant>:<id>, 2 P:sch:due, 3 P:sch:tn:<tenant>
-- ARGV[3] ref, ARGV[4] id, ARGV[5] next run ms, ARGV[6] max schedules per tenant,
-- ARGV[7..] field/value pairs of the hash.
-- Returns 1 when created, 0 when the id exists, -1 when the tenant has too many schedules.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return -1 end
redis.call('HSET', KEYS[1], 'next', ARGV[5], unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
return 1
