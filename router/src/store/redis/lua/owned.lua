-- Prefix of the conversation scripts (scripts.rs prepends it): owned() is
-- true when KEYS[1] exists and its owner is ARGV[1] (the tenant).
local function owned()
  local o = redis.call('HGET', KEYS[1], 'owner')
  return o and o == ARGV[1]
end
