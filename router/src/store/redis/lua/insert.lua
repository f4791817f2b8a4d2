-- Create (or replace) a response record with the store TTL; any old event
-- stream of the id is dropped. With a third key (standalone Redis, where
-- keys of any slot may meet in one script) the id is added to the tenant's
-- index in the same step; on a Cluster the caller adds it after this
-- script (lua/index_add.lua), the index being in another slot.
-- KEYS: rec, events[, index]. ARGV: ttl_ms, response, input_items, context,
-- chain_root, owner, status, completed_at, routing_key[, id, score, cutoff].
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'response', ARGV[2], 'input_items', ARGV[3], 'context', ARGV[4],
  'chain_root', ARGV[5], 'owner', ARGV[6], 'status', ARGV[7], 'completed_at', ARGV[8], 'ver', 0,
  'evs', 0, 'routing_key', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if KEYS[3] then index_add(KEYS[3], ARGV[10], ARGV[11], ARGV[12], ARGV[1]) end
return 1
