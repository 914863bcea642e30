-- A run's recent writes, so a retry after a lost reply replays the outcome instead of writing
-- twice. The run hash's _ops field holds the newest, ";<expiry ms> <op id> <outcome>" each in
-- the order written (op ids are percent-escaped, outcomes "<version>:<seq>,<seq>", so neither
-- holds a space or ';'): read by the script's HMGET and written by its HSET, no command of its
-- own, and it lives and dies with the run. Entries are dropped from the front once expired. A
-- run written more often than _ops holds in an op TTL (progress events, many branches) moves
-- the oldest unexpired outcomes to its spill hash (KEYS: op id -> outcome, expiring an op TTL
-- after its last spill; _spill in the run hash says until when it may hold any), so every
-- outcome is kept for the op TTL at a bounded cost per write. Only string scans and one
-- concatenation run per write: this is on every write's path.
local MAX_OPS_BYTES = 1024  -- about 18 outcomes of the Celery layer's 32-character op ids

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

-- with_operation(ops, op, outcome, now, ttl, spill): ops without its expired entries at the
-- front, with op's outcome recorded until now + ttl, and the oldest moved to the spill hash
-- past MAX_OPS_BYTES (never op's own). Returns the new ops and, when it spilled, the time until
-- which the spill hash may hold them.
local function with_operation(ops, op, outcome, now, ttl, spill)
  local first = 1
  while true do
    local expiry, after = string.match(ops, '^;(%d+) [^;]*()', first)
    if not expiry or tonumber(expiry) > now then
      break
    end
    first = after
  end
  local expires = string.format('%.0f', now + ttl)
  local newest = ';' .. expires .. ' ' .. op .. ' ' .. outcome
  ops = string.sub(ops, first) .. newest
  if #ops <= MAX_OPS_BYTES then
    return ops, nil
  end
  local moved = {}
  local last = #ops - #newest + 1  -- where op's own entry starts
  first = 1
  while first < last and #ops - first + 1 > MAX_OPS_BYTES do
    local id, done, after = string.match(ops, '^;%d+ (%S+) ([^;]*)()', first)
    moved[#moved + 1] = id
    moved[#moved + 1] = done
    first = after
  end
  if #moved == 0 then
    return ops, nil
  end
  redis.call('HSET', spill, unpack(moved))
  redis.call('PEXPIRE', spill, ttl)
  return string.sub(ops, first), expires
end
