-- Move an active record to its next status (update, cancel, complete, fail,
-- reaper) in one step: status, optional response/error overlay, `ver` bump
-- and the events to append. A missing or terminal record is left alone.
-- KEYS: rec, events. ARGV: owner ('' = any), status, completed_at ('' =
-- keep), response ('' = keep), error ('' = keep), maxlen, events... (bytes,
-- numbered after the last stored one by their stream entry ids).
-- Returns {code, response, status, completed_at, error}: code -1 unknown,
-- 0 not active (nothing changed), 1 applied.
local st = redis.call('HGET', KEYS[1], 'status')
local function state() return redis.call('HMGET', KEYS[1], 'response', 'status', 'completed_at', 'error') end
if (not st) or (ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]) then
  return {-1, false, false, false, false}
end
if not active(st) then
  local r = state()
  return {0, r[1], r[2], r[3], r[4]}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'completed_at', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'response', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if #ARGV > 6 then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local n = 0
  if #last > 0 then n = tonumber(string.match(last[1][1], '-(%d+)$')) end
  for i = 7, #ARGV do
    n = n + 1
    redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '0-' .. n, 'e', ARGV[i])
  end
  redis.call('HINCRBY', KEYS[1], 'evs', 1)
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
end
local r = state()
return {1, r[1], r[2], r[3], r[4]}
