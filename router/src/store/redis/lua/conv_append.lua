-- Append items to a conversation the tenant owns and refresh the TTL of both
-- keys, unless they would take its items past max bytes (then nothing).
-- KEYS: conv, items. ARGV: owner, ttl_ms, max bytes, items...
-- {1, bytes} appended, {0, 0} unknown, {2, bytes it would have} full.
if not owned() then return {0, 0} end
local adding = 0
for i = 4, #ARGV do
  adding = adding + string.len(ARGV[i])
end
-- Conversations written before `bytes` was kept count from zero.
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0') + adding
if adding > 0 and bytes > tonumber(ARGV[3]) then return {2, bytes} end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
redis.call('HSET', KEYS[1], 'bytes', bytes)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, bytes}
