--[[ record_unmatched: keep a callback that matched no run, and count it, in one step.

KEYS[1] {unmatched} stream    KEYS[2] {unmatched}:counts hash
ARGV[1] the callback's JSON    ARGV[2] its counts field, "<provider>\n<reason>"
ARGV[3] callbacks kept (the stream is trimmed with MAXLEN ~, so a few more may remain)
ARGV[4] TTL ms of both keys (refreshed by every callback recorded)

Returns the stream entry's id. Writes no run event: the callback belongs to no run.
]]
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'c', ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return id
