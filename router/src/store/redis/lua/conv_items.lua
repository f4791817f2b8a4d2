-- The items of a conversation the tenant owns, oldest first.
-- KEYS: conv, items. ARGV: owner. Items or nil.
if not owned() then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)
