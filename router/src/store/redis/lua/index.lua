-- Prefix of the scripts that add to a tenant's response index (scripts.rs
-- prepends it). The index is a sorted set of response ids scored by their
-- insertion time in microseconds (ties ordered by id); index_add adds one,
-- drops the entries scored below `cutoff` (older than the store TTL, so
-- their records have expired) and refreshes the index's own TTL.
local function index_add(key, id, score, cutoff, ttl_ms)
  redis.call('ZADD', key, score, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
  redis.call('PEXPIRE', key, ttl_ms)
end
