--[[ commit_run: apply a patch and/or append events to one run, after checking its guards.

KEYS[1]      run hash
KEYS[2]      events stream
KEYS[3]      op key (retry dedupe)
KEYS[4..9]   only when the status changes: idx:status:<s> for the six statuses of ARGV[19..24]
KEYS[10..15] only when the status changes: idx:tenant:{T}:status:<s> for tenant ARGV[14], same
             order (KEYS[1] six times when the run has no tenant)
KEYS[...]    then job:{P:J} keys to point at this run

ARGV[1]  tenant scope as JSON, "" when unscoped      ARGV[9]  op key TTL ms
ARGV[2]  fence, "" for none                          ARGV[10] the run id (index member, job value)
ARGV[3]  |"status"|... left unchanged (cancel)       ARGV[11] n, the number of events
ARGV[4]  expected version, "" for none               ARGV[12] "1" when an event ends the log
ARGV[5]  |"status"|... allowed before new status     ARGV[13] new status as JSON, "" if unchanged
ARGV[6]  "1" to bump the version                     ARGV[14] tenant of KEYS[10..15] as JSON
ARGV[7]  run TTL ms                                  ARGV[15] index TTL ms
ARGV[8]  external job TTL ms                         ARGV[16] now, epoch ms
                                                     ARGV[17] re-index age ms
                                                     ARGV[18] "1" to return the run's JSON
ARGV[19..24] the six statuses as JSON, only when the status changes; then n event JSON
documents, then field, JSON value pairs (updatedAt included when bumping)

Guards, in order (mpstate/changes.py): not found {-1} | stale fence {-5, fence} |
unchanged {0, {}, run JSON} | version conflict {-4, version} | invalid transition {-6, status} |
log ended {-7, status} | index keys built for another tenant {-8, tenant JSON}.
Returns {1, {seqs}, run JSON or "", reindex} when written (reindex is 1 when the run last asserted its
index entries more than ARGV[17] ms ago: the caller then runs index_run), or
{2, "version:seq,seq"} when this op was already applied (a client retry after a lost reply).
Events written: the n events, as 0-<seq> with consecutive seqs.
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
local new_status = ARGV[13]
if new_status ~= '' and not string.find(ARGV[5], '|' .. status .. '|', 1, true) then
  return {-6, status}
end
local n_events = tonumber(ARGV[11])
if n_events > 0 and ended == '1' then
  return {-7, status}
end
local status_changes = new_status ~= ''
if status_changes and new_status ~= status and tenant ~= 'null' and tenant ~= ARGV[14] then
  return {-8, tenant}
end

-- Every guard passed: write.
local ttl = ARGV[7]
local run_id = ARGV[10]
local first_event = status_changes and 25 or 19
local first_field = first_event + n_events
if #ARGV >= first_field then
  redis.call('HSET', run, unpack(ARGV, first_field))
end
if ARGV[6] == '1' then
  version = redis.call('HINCRBY', run, 'version', 1)
end
local seqs = {}
for i = 1, n_events do
  local seq = redis.call('HINCRBY', run, '_seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[first_event + i - 1])
  seqs[i] = seq
end
if ARGV[12] == '1' then
  redis.call('HSET', run, '_ended', '1')
end
redis.call('PEXPIRE', run, ttl)
redis.call('PEXPIRE', KEYS[2], ttl)

local first_job = 4
if status_changes then
  first_job = 16
  if new_status ~= status then
    for i = 1, 6 do
      local global_index, tenant_index = KEYS[3 + i], KEYS[9 + i]
      if ARGV[18 + i] == status then
        redis.call('ZREM', global_index, run_id)
        if tenant ~= 'null' then redis.call('ZREM', tenant_index, run_id) end
      elseif ARGV[18 + i] == new_status then
        redis.call('ZADD', global_index, score, run_id)
        redis.call('PEXPIRE', global_index, ARGV[15])
        if tenant ~= 'null' then
          redis.call('ZADD', tenant_index, score, run_id)
          redis.call('PEXPIRE', tenant_index, ARGV[15])
        end
      end
    end
  end
end
for i = first_job, #KEYS do
  redis.call('SET', KEYS[i], run_id, 'PX', ARGV[8])
end
redis.call('SET', KEYS[3], tostring(version) .. ':' .. table.concat(seqs, ','), 'PX', ARGV[9])
local reindex = 0
if tonumber(ARGV[16]) - tonumber(indexed or 0) > tonumber(ARGV[17]) then
  reindex = 1
end
local document = ''
if ARGV[18] == '1' then
  document = run_document(run)
end
return {1, seqs, document, reindex}
