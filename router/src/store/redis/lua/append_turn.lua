-- Append one turn (its input and output items) to a chain's log and refresh
-- the log's TTL.
-- KEYS: chain log. ARGV: ttl_ms, entry. The entry's index.
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n - 1
