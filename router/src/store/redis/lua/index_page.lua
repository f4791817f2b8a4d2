-- Read one batch of a tenant's response index: drop the entries scored
-- below `cutoff` (past the store TTL), then return the ids after `after`
-- ('' = from the start), newest first when `desc` is '1'.
-- KEYS: index. ARGV: cutoff, desc, after, count.
-- Returns {found, ids}: found 0 (and no ids) when `after` is not in the index.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local start = 0
if ARGV[3] ~= '' then
  local rank
  if ARGV[2] == '1' then
    rank = redis.call('ZREVRANK', KEYS[1], ARGV[3])
  else
    rank = redis.call('ZRANK', KEYS[1], ARGV[3])
  end
  if not rank then return {0, {}} end
  start = rank + 1
end
local stop = start + tonumber(ARGV[4]) - 1
local ids
if ARGV[2] == '1' then
  ids = redis.call('ZREVRANGE', KEYS[1], start, stop)
else
  ids = redis.call('ZRANGE', KEYS[1], start, stop)
end
return {1, ids}
