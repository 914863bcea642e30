--[[ load_run: read a run and, optionally, its event log in one atomic round trip.

KEYS[1] run hash    KEYS[2] events stream
ARGV[1] "1" to include the events

Returns {} when the run does not exist, else {run JSON, XRANGE entries or {}}.
]]
--- @include "run_document"

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local entries = {}
if ARGV[1] == '1' then
  entries = redis.call('XRANGE', KEYS[2], '-', '+')
end
return {run_document(KEYS[1]), entries}
