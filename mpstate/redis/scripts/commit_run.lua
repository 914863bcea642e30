--[[ commit_run: apply a patch and/or append events to one run, after checking its guards.

KEYS[1] run hash    KEYS[2] events stream    KEYS[3] op key (retry dedupe)

ARGV[1]  tenant scope as JSON, "" when unscoped      ARGV[9]  n, the number of events
ARGV[2]  fence, "" for none                          ARGV[10] "1" when an event ends the log
ARGV[3]  |"status"|... left unchanged (cancel)       ARGV[11] new status as JSON, "" if unchanged
ARGV[4]  expected version, "" for none               ARGV[12] "<tenant JSON>|<score>" the caller
ARGV[5]  |"status"|... allowed before new status              indexed the new status under
ARGV[6]  "1" to bump the version                     ARGV[13] now, epoch ms
ARGV[7]  run TTL ms                                  ARGV[14] re-index age ms
ARGV[8]  op key TTL ms                               ARGV[15] "1" to return the run's JSON
ARGV[16..] n event JSON documents, then field, JSON value pairs (updatedAt included when bumping)

Guards, in order (mpstate/changes.py): not found {-1} | stale fence {-5, fence} |
unchanged {0, {}, run JSON} | version conflict {-4, version} | invalid transition {-6, status} |
log ended {-7, status} | the status changes but ARGV[12] is not this run's tenant and score, so
the caller's index entries are not this run's {-8, tenant JSON, score}.
Returns {1, {seqs}, run JSON or "", reindex, version, previous status JSON} when written (reindex
is 1 when the run last re-asserted its index entries more than ARGV[14] ms ago), or
{2, "version:seq,seq"} when this op was already applied (a client retry after a lost reply).
Events written: the n events, as 0-<seq> with consecutive seqs. Index entries are follow-up
writes the caller makes in each index's own slot (indexing.py).
]]
--- @include "run_document"

local done = redis.call('GET', KEYS[3])
if done then
  return {2, done}
end
local run = KEYS[1]
local current = redis.call(
  'HMGET', run, 'status', 'tenantId', '_fence', 'version', '_ended', '_score', '_indexed')
local status, tenant, fence, version, ended, score, indexed =
  current[1], current[2], current[3], current[4], current[5], current[6], current[7]
if not status or (ARGV[1] ~= '' and tenant ~= ARGV[1]) then
  return {-1}
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= tonumber(fence) then
  return {-5, fence}
end
if ARGV[3] ~= '' and string.find(ARGV[3], '|' .. status .. '|', 1, true) then
  return {0, {}, run_document(run)}
end
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(version) then
  return {-4, version}
end
local new_status = ARGV[11]
if new_status ~= '' and not string.find(ARGV[5], '|' .. status .. '|', 1, true) then
  return {-6, status}
end
local n_events = tonumber(ARGV[9])
if n_events > 0 and ended == '1' then
  return {-7, status}
end
if new_status ~= '' and new_status ~= status and ARGV[12] ~= tenant .. '|' .. score then
  return {-8, tenant, score}
end

-- Every guard passed: write.
local ttl = ARGV[7]
local first_field = 16 + n_events
if #ARGV >= first_field then
  redis.call('HSET', run, unpack(ARGV, first_field))
end
if ARGV[6] == '1' then
  version = redis.call('HINCRBY', run, 'version', 1)
end
local seqs = {}
for i = 1, n_events do
  local seq = redis.call('HINCRBY', run, '_seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[15 + i])
  seqs[i] = seq
end
if ARGV[10] == '1' then
  redis.call('HSET', run, '_ended', '1')
end
local reindex = 0
if tonumber(ARGV[13]) - tonumber(indexed or 0) > tonumber(ARGV[14]) then
  reindex = 1
  redis.call('HSET', run, '_indexed', ARGV[13])
end
redis.call('PEXPIRE', run, ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], tostring(version) .. ':' .. table.concat(seqs, ','), 'PX', ARGV[8])
local document = ''
if ARGV[15] == '1' then
  document = run_document(run)
end
return {1, seqs, document, reindex, tonumber(version), status}
