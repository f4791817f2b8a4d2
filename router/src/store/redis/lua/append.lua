-- Append one stream event while the record is active; bumps `evs`.
-- KEYS: rec, events. ARGV: stream id, event, maxlen. -1 unknown, 0 not active, 1 appended.
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if not active(st) then return 0 end
redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[1], 'e', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'evs', 1)
if redis.call('PTTL', KEYS[2]) < 0 then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
end
return 1
