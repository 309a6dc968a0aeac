-- list: a tenant's tasks, newest first, filtered (read-only). Scans at most `scan` ids.
-- KEYS: 1 P:tn:<tenant>, 2 P:ix
-- ARGV[6] exclusive upper bound id ('' = from the newest), ARGV[7] page size, ARGV[8] scan limit,
-- ARGV[9] status ('' = any), ARGV[10] type, ARGV[11] queue, ARGV[12] label key ('' = none),
-- ARGV[13] label value.
-- Returns {next id ('' when the scan reached the end), task, task, ...}.
local max = ARGV[6] == '' and '+' or ('(' .. ARGV[6])
local want, scan = tonumber(ARGV[7]), tonumber(ARGV[8])
local fst, ftyp, fq, lk, lv = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], max, '-', 'LIMIT', 0, scan)
local out = {''}
local last = ''
for _, id in ipairs(ids) do
  last = id
  local q = redis.call('HGET', KEYS[2], id)
  if q and (fq == '' or fq == q) then
    local qp = qprefix(q)
    local f = redis.call('HMGET', qp .. 't:' .. id, 'st', 'typ')
    local ok = f[1] and (fst == '' or f[1] == fst) and (ftyp == '' or f[2] == ftyp)
    if ok and lk ~= '' then
      local labels = cjson.decode(redis.call('GET', qp .. 'd:' .. id) or '{}').l
      ok = type(labels) == 'table' and labels[lk] == lv
    end
    if ok then
      out[#out + 1] = load_task(q, id)
      if #out - 1 >= want then break end
    end
  end
end
if #ids >= scan or #out - 1 >= want then out[1] = last end
return out
