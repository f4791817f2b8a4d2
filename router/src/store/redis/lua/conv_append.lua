-- Append items to a conversation the tenant owns and refresh the TTL of both
-- keys. 1 appended, 0 unknown.
-- KEYS: conv, items. ARGV: owner, ttl_ms, items...
if not owned() then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
