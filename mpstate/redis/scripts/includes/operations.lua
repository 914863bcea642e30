-- A run's recent writes, so a retry after a lost reply replays the outcome instead of writing
-- twice: the run hash's _ops field, ";<expiry ms> <op id> <outcome>" per write in the order
-- written (op ids are percent-escaped, outcomes are "<version>:<seq>,<seq>", so neither holds a
-- space or ';'). Kept in the run hash, not in a key of its own per write: no read or write of
-- its own, and it lives and dies with the run. Entries are dropped from the front once expired.

-- recorded_outcome(ops, op): op's outcome if it was written (and not yet dropped), else nil.
local function recorded_outcome(ops, op)
  local at = string.find(ops, ' ' .. op .. ' ', 1, true)
  if not at then
    return nil
  end
  return string.match(ops, '^([^;]*)', at + #op + 2)
end

-- with_operation(ops, op, outcome, now, ttl): ops without its expired entries at the front, and
-- op's outcome recorded until now + ttl.
local function with_operation(ops, op, outcome, now, ttl)
  local first = 1
  while true do
    local expiry, after = string.match(ops, '^;(%d+) [^;]*()', first)
    if not expiry or tonumber(expiry) > now then
      break
    end
    first = after
  end
  return string.sub(ops, first) .. ';' .. string.format('%.0f', now + ttl) .. ' ' .. op .. ' ' .. outcome
end
