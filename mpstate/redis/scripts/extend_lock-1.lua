--[[ extend_lock: reset the lock's TTL if, and only if, this token holds it.

KEYS[1] lock key
ARGV[1] token       ARGV[2] new TTL ms

Returns 1 extended | 0 not held by this token.
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
