-- Create (or replace) a response record with the store TTL; any old event
-- stream of the id is dropped.
-- KEYS: rec, events. ARGV: ttl_ms, response, input_items, context,
-- chain_root, owner, status, completed_at, routing_key.
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'response', ARGV[2], 'input_items', ARGV[3], 'context', ARGV[4],
  'chain_root', ARGV[5], 'owner', ARGV[6], 'status', ARGV[7], 'completed_at', ARGV[8], 'ver', 0,
  'evs', 0, 'routing_key', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
