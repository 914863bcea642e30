--[[ release_lock: release a run's lock if, and only if, this token holds it; wake one waiter.

KEYS[1] lock key    KEYS[2] wake list
ARGV[1] token       ARGV[2] wake list TTL ms

Returns 1 released | 0 not held by this token (expired, or another holder has it: untouched).
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('LPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
