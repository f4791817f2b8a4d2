-- Delete a record and its event stream if the tenant owns it; with a third
-- key (standalone Redis) also its entry in the tenant's index (on a Cluster
-- the caller removes it after this script).
-- KEYS: rec, events[, index]. ARGV: owner, id. 1 deleted, 0 unknown.
local o = redis.call('HGET', KEYS[1], 'owner')
if (not o) or o ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[2]) end
return 1
