-- Replace the metadata of a conversation the tenant owns.
-- KEYS: conv. ARGV: owner, metadata. {conv, metadata} or nil.
if not owned() then return false end
redis.call('HSET', KEYS[1], 'metadata', ARGV[2])
return redis.call('HMGET', KEYS[1], 'conv', 'metadata')
