-- Remove the item with the given id from a conversation the tenant owns.
-- KEYS: conv, items. ARGV: owner, item id. -1 unknown conversation, 0 unknown item, 1 deleted.
if not owned() then return -1 end
for _, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local ok, it = pcall(cjson.decode, v)
  if ok and type(it) == 'table' and it['id'] == ARGV[2] then
    redis.call('LREM', KEYS[2], 1, v)
    local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
    redis.call('HSET', KEYS[1], 'bytes', math.max(0, bytes - string.len(v)))
    return 1
  end
end
return 0
