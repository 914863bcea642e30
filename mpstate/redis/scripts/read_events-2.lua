--[[ read_events: a run's events after a seq, and whether the run exists, atomically.

KEYS[1] run hash    KEYS[2] events stream
ARGV[1] since seq (exclusive)    ARGV[2] most entries to return, "" for all

Returns {0} no such run | {1, XRANGE entries}.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0}
end
if ARGV[2] == '' then
  return {1, redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[1], '+')}
end
return {1, redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2])}
