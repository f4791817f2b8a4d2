-- Create (or replace) a conversation and its initial items.
-- KEYS: conv, items. ARGV: ttl_ms, conv, owner, items...
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'conv', ARGV[2], 'owner', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if #ARGV > 3 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
