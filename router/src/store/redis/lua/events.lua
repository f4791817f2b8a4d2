-- A record's stream entries from a start id on; nil once the record is gone.
-- KEYS: rec, events. ARGV: start id. nil when unknown.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XRANGE', KEYS[2], ARGV[1], '+')
