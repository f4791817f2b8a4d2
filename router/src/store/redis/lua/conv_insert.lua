-- Create (or replace) a conversation and its initial items; `bytes` keeps
-- the items' total size, which conv_append bounds.
-- KEYS: conv, items. ARGV: ttl_ms, conv, owner, items...
redis.call('DEL', KEYS[1], KEYS[2])
local bytes = 0
for i = 4, #ARGV do
  bytes = bytes + string.len(ARGV[i])
end
redis.call('HSET', KEYS[1], 'conv', ARGV[2], 'owner', ARGV[3], 'bytes', bytes)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if #ARGV > 3 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
