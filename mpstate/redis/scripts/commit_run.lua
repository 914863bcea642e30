--[[ commit_run: apply a patch and/or append events to one run, after checking its guards.

KEYS[1]      run hash
KEYS[2]      events stream
KEYS[3]      op key (retry dedupe)
KEYS[4..9]   idx:status:<s> for each status, in the order of ARGV[15..20]
KEYS[10..15] idx:tenant:{T}:status:<s> for tenant ARGV[11], same order (KEYS[1] when none)
KEYS[16..]   job:{P:J} to point at this run

ARGV[1]  tenant scope as JSON, "" when unscoped   ARGV[10] op key TTL ms
ARGV[2]  fence, "" for none                       ARGV[11] tenant of KEYS[10..15] as JSON, "" if none
ARGV[3]  |"status"|... left unchanged (cancel)    ARGV[12] new status as JSON, "" when unchanged
ARGV[4]  expected version, "" for none            ARGV[13] n, the number of events
ARGV[5]  |"status"|... allowed before new status  ARGV[14] "1" when an event ends the log
ARGV[6]  "1" to bump version and updatedAt        ARGV[15..20] the six statuses as JSON
ARGV[7]  updatedAt as JSON                        ARGV[21] the run id (index member, job value)
ARGV[8]  run TTL ms
ARGV[9]  external job TTL ms
ARGV[22..21+n] event JSON documents; then field, JSON value pairs of the patch

Guards, in order (mpstate/changes.py): not found {-1} | stale fence {-5, fence} |
unchanged {0, {}, hgetall} | version conflict {-4, version} | invalid transition {-6, status} |
log ended {-7, status} | the tenant the index keys were built for is wrong {-8, tenant JSON}.
Returns {1, {seqs}, hgetall} when written, or {2, "version:seq,seq"} when this op was already
applied (a client retry after a lost reply).
Events written: the n events, as 0-<seq> with consecutive seqs.
]]
local done = redis.call('GET', KEYS[3])
if done then
  return {2, done}
end
local run = KEYS[1]
if redis.call('EXISTS', run) == 0 then
  return {-1}
end
local current = redis.call('HMGET', run, 'tenantId', '_fence', 'status', 'version', '_ended', '_score')
local tenant, fence, status, version, ended, score =
  current[1], current[2], current[3], current[4], current[5], current[6]

if ARGV[1] ~= '' and tenant ~= ARGV[1] then
  return {-1}
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= tonumber(fence) then
  return {-5, fence}
end
if ARGV[3] ~= '' and string.find(ARGV[3], '|' .. status .. '|', 1, true) then
  return {0, {}, redis.call('HGETALL', run)}
end
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(version) then
  return {-4, version}
end
local new_status = ARGV[12]
if new_status ~= '' and not string.find(ARGV[5], '|' .. status .. '|', 1, true) then
  return {-6, status}
end
local n_events = tonumber(ARGV[13])
if n_events > 0 and ended == '1' then
  return {-7, status}
end
local moves_index = new_status ~= '' and new_status ~= status
if moves_index and tenant ~= 'null' and tenant ~= ARGV[11] then
  return {-8, tenant}
end

-- Every guard passed: write.
local ttl = ARGV[8]
local run_id = ARGV[21]
local first_field = 22 + n_events
if #ARGV >= first_field then
  redis.call('HSET', run, unpack(ARGV, first_field))
end
if ARGV[6] == '1' then
  version = redis.call('HINCRBY', run, 'version', 1)
  redis.call('HSET', run, 'updatedAt', ARGV[7])
end
local seqs = {}
for i = 1, n_events do
  local seq = redis.call('HINCRBY', run, '_seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[21 + i])
  seqs[i] = seq
end
if ARGV[14] == '1' then
  redis.call('HSET', run, '_ended', '1')
end
redis.call('PEXPIRE', run, ttl)
redis.call('PEXPIRE', KEYS[2], ttl)

if moves_index then
  for i = 1, 6 do
    local global_index, tenant_index = KEYS[3 + i], KEYS[9 + i]
    if ARGV[14 + i] == status then
      redis.call('ZREM', global_index, run_id)
      if tenant ~= 'null' then redis.call('ZREM', tenant_index, run_id) end
    elseif ARGV[14 + i] == new_status then
      redis.call('ZADD', global_index, score, run_id)
      redis.call('PEXPIRE', global_index, ttl)
      if tenant ~= 'null' then
        redis.call('ZADD', tenant_index, score, run_id)
        redis.call('PEXPIRE', tenant_index, ttl)
      end
    end
  end
end
for i = 16, #KEYS do
  redis.call('SET', KEYS[i], run_id, 'PX', ARGV[9])
end
redis.call('SET', KEYS[3], tostring(version) .. ':' .. table.concat(seqs, ','), 'PX', ARGV[10])
return {1, seqs, redis.call('HGETALL', run)}
