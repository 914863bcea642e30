--[[ release_lock: release a run's lock if, and only if, this token holds it; wake one waiter.

KEYS[1] lock key    KEYS[2] wake list    KEYS[3] op key of this release (op:release-<token>)
ARGV[1] token       ARGV[2] wake list TTL ms    ARGV[3] op key TTL ms

Returns 1 released (or released already by this token: a client retry after a lost reply) |
        0 not held by this token (expired, or another holder has it: left untouched).
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.call('EXISTS', KEYS[3])
end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('LPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return 1
