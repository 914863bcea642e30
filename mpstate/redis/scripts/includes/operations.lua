-- A run's recent writes, so a retry after a lost reply replays the outcome instead of writing
-- twice. The run hash's _ops field holds the newest MAX_OPS, ";<expiry ms> <op id> <outcome>"
-- each in the order written (op ids are percent-escaped, outcomes "<version>:<seq>,<seq>", so
-- neither holds a space or ';'): read by the script's HMGET and written by its HSET, no command
-- of its own, and it lives and dies with the run. Entries are dropped once expired. A run
-- written more often than MAX_OPS times in an op TTL (progress events, many branches) moves the
-- older, unexpired outcomes to its spill hash (KEYS: op id -> outcome, expiring an op TTL after
-- its last spill; _spill in the run hash says until when it may hold any), so every outcome is
-- kept for the op TTL at a bounded cost per write.
local MAX_OPS = 16

-- recorded_outcome(ops, spilled_until, spill, op, now): op's outcome if it was written and is
-- still kept, else nil.
local function recorded_outcome(ops, spilled_until, spill, op, now)
  local at = string.find(ops, ' ' .. op .. ' ', 1, true)
  if at then
    return string.match(ops, '^([^;]*)', at + #op + 2)
  end
  if spilled_until and tonumber(spilled_until) > now then
    return redis.call('HGET', spill, op) or nil
  end
  return nil
end

-- with_operation(ops, op, outcome, now, ttl, spill): ops without its expired entries, with op's
-- outcome recorded until now + ttl, and the oldest moved to the spill hash past MAX_OPS entries.
-- Returns the new ops and, when it spilled, the time until which the spill hash may hold them.
local function with_operation(ops, op, outcome, now, ttl, spill)
  local kept = {}
  for expiry, id, done in string.gmatch(ops, ';(%d+) (%S+) ([^;]*)') do
    if tonumber(expiry) > now then
      kept[#kept + 1] = {expiry, id, done}
    end
  end
  kept[#kept + 1] = {string.format('%.0f', now + ttl), op, outcome}
  local first = math.max(1, #kept - MAX_OPS + 1)
  local spilled = nil
  if first > 1 then
    local moved = {}
    for i = 1, first - 1 do
      moved[#moved + 1] = kept[i][2]
      moved[#moved + 1] = kept[i][3]
    end
    redis.call('HSET', spill, unpack(moved))
    redis.call('PEXPIRE', spill, ttl)
    spilled = string.format('%.0f', now + ttl)
  end
  local parts = {}
  for i = first, #kept do
    parts[#parts + 1] = ';' .. kept[i][1] .. ' ' .. kept[i][2] .. ' ' .. kept[i][3]
  end
  return table.concat(parts), spilled
end
