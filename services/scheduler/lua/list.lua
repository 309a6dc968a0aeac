-- list: a tenant's tasks, newest first, filtered (read-only). Scans at most `scan` ids.
-- KEYS: 1 P:tn:<tenant> (a LIST of ids in ascending order), 2 P:queues
-- ARGV[6] exclusive upper bound id ('' = from the newest), ARGV[7] page size, ARGV[8] scan limit,
-- ARGV[9] status ('' = any), ARGV[10] type, ARGV[11] queue, ARGV[12] label key ('' = none),
-- ARGV[13] label value.
-- Returns {next id ('' when the scan reached the end), task, task, ...}.
local k = KEYS[1]
local bound = ARGV[6]
local want, scan = tonumber(ARGV[7]), tonumber(ARGV[8])
local fst, ftyp, fq, lk, lv = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
-- The index of the newest id below the bound: a binary search (LINDEX walks the list's nodes
-- from the nearer end, so this stays cheap on long lists).
local pos = redis.call('LLEN', k) - 1
if bound ~= '' and pos >= 0 then
  local lo, hi = 0, pos
  pos = -1
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    if redis.call('LINDEX', k, mid) < bound then
      pos = mid
      lo = mid + 1
    else
      hi = mid - 1
    end
  end
end
local out = {''}
local last = ''
local scanned = 0
while pos >= 0 and scanned < scan and #out - 1 < want do
  local from = math.max(0, pos - math.min(scan - scanned, 256) + 1)
  local ids = redis.call('LRANGE', k, from, pos)
  pos = from - 1
  for j = #ids, 1, -1 do
    local id = ids[j]
    last = id
    scanned = scanned + 1
    local q = queue_of(id)
    if q and (fq == '' or fq == q) then
      local qp = qprefix(q)
      local f = redis.call('HMGET', qp .. 't:' .. id, 's', 'y', 'd')
      local ok = f[1] and (fst == '' or f[1] == fst) and (ftyp == '' or f[2] == ftyp)
      if ok and lk ~= '' then
        local spec = spec_of(qp, id, f[3])
        local labels = spec and cjson.decode(spec).l
        ok = type(labels) == 'table' and labels[lk] == lv
      end
      if ok then
        out[#out + 1] = load_task(q, id)
        if #out - 1 >= want then break end
      end
    end
    if scanned >= scan then break end
  end
end
if scanned >= scan or #out - 1 >= want then out[1] = last end
return out
