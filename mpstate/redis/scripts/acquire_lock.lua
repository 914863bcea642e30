--[[ acquire_lock: take a run's exclusive lock and draw a new fence.

KEYS[1] lock key    KEYS[2] run hash
ARGV[1] token       ARGV[2] lock TTL ms

Returns {1, fence} granted (or already held by this token: a retried call) |
        {0, pttl ms} held by another | {-1} no such run.
The fence is HINCRBY run._fence: it strictly increases with every grant.
]]
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {-1}
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return {1, tonumber(redis.call('HGET', KEYS[2], '_fence'))}
end
if holder then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('HINCRBY', KEYS[2], '_fence', 1)}
