--[[ page_index: one page of an index zset by rank, within a score window, in O(log N + count).

KEYS[1] an index zset (score = created_at epoch ms, member = run id)
ARGV[1] lowest score, or "-inf"     ARGV[3] offset within the window
ARGV[2] highest score, or "+inf"    ARGV[4] count, or -1 for all
ARGV[5] "asc" (oldest first) or "desc" (newest first: the offset counts from the window's end)

ZRANGE ... BYSCORE LIMIT skips `offset` entries one by one; ranks found with ZCOUNT (O(log N))
let a deep page cost the same as the first. Returns {member, score, member, score, ...}.
]]
local first = 0
if ARGV[1] ~= '-inf' then
  first = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[1])
end
local last
if ARGV[2] ~= '+inf' then
  last = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[2]) - 1
else
  last = redis.call('ZCARD', KEYS[1]) - 1
end
local offset = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
if ARGV[5] == 'desc' then
  -- The same window read from its end: ranks last - offset down to last - offset - count + 1.
  local high = last - offset
  local low = first
  if count >= 0 and high - count + 1 > low then
    low = high - count + 1
  end
  if low > high then
    return {}
  end
  local page = redis.call('ZRANGE', KEYS[1], low, high, 'WITHSCORES')
  local newest = {}
  for i = #page - 1, 1, -2 do
    newest[#newest + 1] = page[i]
    newest[#newest + 1] = page[i + 1]
  end
  return newest
end
local start = first + offset
if count >= 0 and start + count - 1 < last then
  last = start + count - 1
end
if start > last then
  return {}
end
return redis.call('ZRANGE', KEYS[1], start, last, 'WITHSCORES')
