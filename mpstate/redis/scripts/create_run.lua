--[[ create_run: store a new run and its run-created event, atomically.

KEYS[1]  run hash                 KEYS[6]  idx:status:<status>
KEYS[2]  events stream            KEYS[7]  idx:tenant:{T}            (KEYS[1] when no tenant)
KEYS[3]  op key (retry dedupe)    KEYS[8]  idx:tenant:{T}:status:<s> (KEYS[1] when no tenant)
KEYS[4]  idem:{T:K}               KEYS[9]  idx:idem:{K}              (KEYS[1] when no key)
         (KEYS[1] when no key)    KEYS[10..] job:{P:J} for each external job of the run
KEYS[5]  idx:all

ARGV[1]  "1" to return an existing run instead of refusing    ARGV[7]  run-created event JSON
ARGV[2]  created_at, epoch ms (index score)                   ARGV[8]  "1" when the run has a tenant
ARGV[3]  run TTL ms                                           ARGV[9]  "1" when it has an idempotency key
ARGV[4]  idempotency TTL ms                                   ARGV[10] op key TTL ms
ARGV[5]  external job TTL ms                                  ARGV[11] run id whose stale hold on the key
ARGV[6]  run id                                                        may be taken over ("" for none)
ARGV[12] index TTL ms                                         ARGV[13] now, epoch ms
ARGV[14..] field, JSON value, field, JSON value ... (the run document)

Returns {1} created | {-2, run JSON} run id exists (the JSON only with ARGV[1]) |
        {-3, holder run id} idempotency key held | {2} this op already created the run (retry)
Events written: run-created as 0-1.
]]
--- @include "run_document"

if redis.call('EXISTS', KEYS[3]) == 1 then
  return {2}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[1] == '1' then
    return {-2, run_document(KEYS[1])}
  end
  return {-2}
end
if ARGV[9] == '1' then
  local holder = redis.call('GET', KEYS[4])
  if holder and holder ~= ARGV[11] then
    return {-3, holder}
  end
end

local ttl = ARGV[3]
local run_id = ARGV[6]
local score = ARGV[2]
redis.call('HSET', KEYS[1], '_seq', 1, '_fence', 0, '_score', score, '_indexed', ARGV[13],
  unpack(ARGV, 14))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ttl)

local indexes = {KEYS[5], KEYS[6]}
if ARGV[8] == '1' then
  indexes[#indexes + 1] = KEYS[7]
  indexes[#indexes + 1] = KEYS[8]
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], run_id, 'PX', ARGV[4])
  indexes[#indexes + 1] = KEYS[9]
end
for _, index in ipairs(indexes) do
  redis.call('ZADD', index, score, run_id)
  redis.call('PEXPIRE', index, ARGV[12])
end
for i = 10, #KEYS do
  redis.call('SET', KEYS[i], run_id, 'PX', ARGV[5])
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[10])
return {1}
