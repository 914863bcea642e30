--[[ create_run: store a new run and its run-created event, atomically, in the run's slot.

KEYS[1] run hash    KEYS[2] events stream    KEYS[3] op key (retry dedupe)    KEYS[4] void set

ARGV[1] "1" to return an existing run instead of refusing    ARGV[5] op key TTL ms
ARGV[2] created_at, epoch ms (index score)                   ARGV[6] claim token of the run's
ARGV[3] run TTL ms                                                    idempotency key, "" for none
ARGV[4] run-created event JSON                               ARGV[7] now, epoch ms
ARGV[8..] field, JSON value, field, JSON value ... (the run document)

Returns {1} created | {2} this op already created the run (retry) |
        {-2, run JSON} run id exists (the JSON only with ARGV[1]) |
        {-9} the claim on the idempotency key was voided (void_claim): claim again.
Events written: run-created as 0-1. The index entries are follow-up writes (indexing.py).
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
if ARGV[6] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[6]) == 1 then
  return {-9}
end

local ttl = ARGV[3]
redis.call('HSET', KEYS[1], '_seq', 1, '_fence', 0, '_score', ARGV[2], '_indexed', ARGV[7],
  '_renewed', ARGV[7], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
return {1}
