--[[ acquire_lock: take a run's exclusive lock and draw a new fence.

KEYS[1] lock key    KEYS[2] run hash
ARGV[1] token       ARGV[2] lock TTL ms    ARGV[3] tenant scope as JSON, "" when unscoped

Returns {1, fence, run JSON} granted (or already held by this token: a retried call) |
        {0, pttl ms} held by another | {-1} no such run (or another tenant's).
The fence is HINCRBY run._fence: it strictly increases with every grant. The run comes back with
the grant so the holder starts from the record as it is under the lock, in the same round trip.
]]
--- @include "run_document"

local tenant = redis.call('HGET', KEYS[2], 'tenantId')
if not tenant or (ARGV[3] ~= '' and tenant ~= ARGV[3]) then
  return {-1}
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return {1, tonumber(redis.call('HGET', KEYS[2], '_fence')), run_document(KEYS[2])}
end
if holder then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('HINCRBY', KEYS[2], '_fence', 1)
return {1, fence, run_document(KEYS[2])}
