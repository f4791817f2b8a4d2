-- Delete a record and its event stream if the tenant owns it.
-- KEYS: rec, events. ARGV: owner. 1 deleted, 0 unknown.
local o = redis.call('HGET', KEYS[1], 'owner')
if (not o) or o ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
