-- Delete a conversation and its items if the tenant owns it. 1 deleted, 0
-- unknown.
-- KEYS: conv, items. ARGV: owner.
if not owned() then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
