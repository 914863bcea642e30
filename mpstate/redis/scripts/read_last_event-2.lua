--[[ read_last_event: a run's newest event, and whether the run exists, atomically.

KEYS[1] run hash    KEYS[2] events stream

Returns {0} no such run | {1, XREVRANGE entries} (the newest entry only: one read, however long
the log).
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0}
end
return {1, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
