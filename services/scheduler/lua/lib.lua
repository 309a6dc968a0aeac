-- taskmesh task store: helpers prepended to every script (see task-store.ts).
--
-- Every script gets the same ARGV header:
--   ARGV[1] key prefix P, ARGV[2] queue name Q, ARGV[3] now (ms), ARGV[4] max events per task,
--   ARGV[5] aging ms per priority level; script arguments start at ARGV[6].
-- Queue-wide keys (ready, delayed, ...) arrive in KEYS. Per-task keys are built here from P and Q,
-- as BullMQ does: they share the queue's hash tag {Q}, so they live in the same Redis Cluster slot
-- as the declared keys. The global keys (P:ix, P:tn:<tenant>, P:idem:...) do not: they are the
-- known obstacle to running on Redis Cluster.
--
-- Task status numbers are taskmesh.v1.TaskStatus values.

local P = ARGV[1]
local Q = ARGV[2]
local NOW_S = ARGV[3]
local NOW = tonumber(NOW_S)
local MAX_EVENTS = tonumber(ARGV[4])
local AGING = tonumber(ARGV[5])

local QUEUED, DELAYED, RUNNING, RETRY_WAIT, SUCCEEDED, FAILED, CANCELLED = 1, 2, 3, 4, 5, 6, 7

local function qprefix(queue)
  return P .. ':{' .. queue .. '}:'
end
local QP = qprefix(Q)
local function tkey(id) return QP .. 't:' .. id end
local function dkey(id) return QP .. 'd:' .. id end
local function rkey(id) return QP .. 'r:' .. id end
local function evkey(id) return QP .. 'ev:' .. id end

-- Ready order: lower score first. Each priority level above LOW is worth AGING ms of waiting.
local function ready_score(enq, pri)
  return tonumber(enq) - (tonumber(pri) - 1) * AGING
end

local function is_terminal(st)
  return st == SUCCEEDED or st == FAILED or st == CANCELLED
end

-- The task's error as stored in field `err` and in events: {code, message, retryable}.
local function err_json(code, message, retryable)
  return '{"code":' .. cjson.encode(code) .. ',"message":' .. cjson.encode(message) ..
    ',"retryable":' .. (retryable and 'true' or 'false') .. '}'
end

-- Appends one event to the task's capped list and wakes watchers. `body` is the JSON members
-- after seq and time, e.g. '"k":"s","f":1,"s":3,"a":1'.
local function append_event(id, tk, body)
  local seq = redis.call('HINCRBY', tk, 'seq', 1)
  local ek = evkey(id)
  local len = redis.call('RPUSH', ek, '{"n":' .. seq .. ',"t":' .. NOW_S .. ',' .. body .. '}')
  if len > MAX_EVENTS then redis.call('LTRIM', ek, -MAX_EVENTS, -1) end
  redis.call('PUBLISH', P .. ':ev:' .. id, seq)
  return seq
end

-- A status change event. `extra` holds more members (starting with a comma) or is ''.
local function status_event(id, tk, from, to, att, extra)
  append_event(id, tk, '"k":"s","f":' .. from .. ',"s":' .. to .. ',"a":' .. att .. extra)
end

-- Ends a task: terminal status, finished time, kept in `done` until its result TTL passes;
-- FAILED and CANCELLED also enter the dead-letter set. The caller has removed it from the
-- ready, delayed and running sets.
local function finish(id, tk, from, to, att, ttl, err, done_key, dead_key)
  redis.call('HSET', tk, 'st', to, 'fin', NOW_S)
  redis.call('HDEL', tk, 'lease', 'cxl')
  local extra = ''
  if err then
    redis.call('HSET', tk, 'err', err)
    extra = ',"e":' .. err
  else
    redis.call('HDEL', tk, 'err')
  end
  redis.call('ZADD', done_key, NOW + (tonumber(ttl) or 0), id)
  if to ~= SUCCEEDED then redis.call('ZADD', dead_key, NOW, id) end
  status_event(id, tk, from, to, att, extra)
end

-- Per-key concurrency. The queue's hash `cc` (a KEYS entry of the scripts that need it) maps a
-- concurrency key to the number of RUNNING tasks of this queue with that key (hash field `ck`);
-- a field is deleted when its count reaches 0. Every transition into RUNNING (claim) calls
-- cc_take and every transition out of it (complete, requeue_running) calls cc_release, so the
-- count stays exact; it never goes below 0 even if it somehow drifted.
local function cc_take(k_cc, ck)
  if ck then redis.call('HINCRBY', k_cc, ck, 1) end
end
local function cc_release(k_cc, ck)
  if ck and redis.call('HINCRBY', k_cc, ck, -1) <= 0 then redis.call('HDEL', k_cc, ck) end
end
-- Whether a task with key ck and limit cl (hash fields, false when absent) may not start now:
-- `extra` more tasks of that key are about to start (peek's look-ahead), on top of the count.
local function cc_blocked(k_cc, ck, cl, extra)
  local limit = tonumber(cl)
  if not ck or not limit or limit <= 0 then return false end
  return (tonumber(redis.call('HGET', k_cc, ck)) or 0) + extra >= limit
end

-- Puts a RUNNING task back in the ready set at its old enqueue time (the front of its priority).
-- Instead it ends CANCELLED if a cancel was requested meanwhile, or FAILED with
-- TOO_MANY_REQUEUES (dead-lettered) when it was already re-queued max_rq times: a task that
-- keeps killing its worker must not go round forever. Field `rq` counts the re-queues.
-- k: {ready, running, done, dead, cc} keys. Returns true when re-queued.
-- The caller has checked that the task is RUNNING at attempt att.
local function requeue_running(id, tk, att, code, message, max_rq, k)
  local f = redis.call('HMGET', tk, 'pri', 'enq', 'cxl', 'ttl', 'ck', 'rq')
  redis.call('ZREM', k.running, id)
  cc_release(k.cc, f[5])
  if f[3] then
    finish(id, tk, RUNNING, CANCELLED, att, f[4], err_json('CANCELLED', f[3], false), k.done, k.dead)
    return false
  end
  local rq = tonumber(f[6]) or 0
  if rq >= max_rq then
    local msg = 're-queued ' .. rq .. ' times; last: ' .. message
    finish(id, tk, RUNNING, FAILED, att, f[4], err_json('TOO_MANY_REQUEUES', msg, false), k.done, k.dead)
    return false
  end
  local err = err_json(code, message, true)
  redis.call('HSET', tk, 'st', QUEUED, 'err', err, 'rq', rq + 1)
  redis.call('HDEL', tk, 'lease')
  redis.call('ZADD', k.ready, ready_score(f[2] or NOW_S, f[1] or 2), id)
  status_event(id, tk, RUNNING, QUEUED, att, ',"e":' .. err)
  return true
end

-- One task as scripts return it: {id, queue, HGETALL, spec JSON or false, result JSON or false}.
local function load_task(queue, id)
  local qp = qprefix(queue)
  local h = redis.call('HGETALL', qp .. 't:' .. id)
  if #h == 0 then return false end
  return {id, queue, h, redis.call('GET', qp .. 'd:' .. id), redis.call('GET', qp .. 'r:' .. id)}
end
