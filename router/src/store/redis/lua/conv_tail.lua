-- The newest items of a conversation the tenant owns whose sizes add up to
-- at most ARGV[2] bytes, read backwards a page at a time: the work is
-- bounded by the budget, not by the conversation's length.
-- KEYS: conv, items. ARGV: owner, max bytes.
-- {index of the first item returned, {items, oldest first}, all items'
-- bytes} or nil.
if not owned() then return false end
local budget = tonumber(ARGV[2])
local first = redis.call('LLEN', KEYS[2])
local total, newest_first, full = 0, {}, false
while first > 0 and not full do
  local lo = math.max(0, first - 32)
  local page = redis.call('LRANGE', KEYS[2], lo, first - 1)
  for i = #page, 1, -1 do
    local size = string.len(page[i])
    if total + size > budget then
      full = true
      break
    end
    total = total + size
    newest_first[#newest_first + 1] = page[i]
    first = first - 1
  end
end
local items = {}
for i = #newest_first, 1, -1 do
  items[#items + 1] = newest_first[i]
end
return {first, items, tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')}
