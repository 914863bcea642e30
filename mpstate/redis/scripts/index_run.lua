--[[ index_run: (re)assert a run's entries in every index it belongs to, and their TTLs.

Idempotent: ZADD of an existing entry changes nothing, a stale status entry is removed. Run by the
store after a commit reports that the run last did this more than half a run TTL ago, so an index
key (TTL: twice the run TTL) always outlives every live run in it.

KEYS[1]      run hash
KEYS[2]      idx:all
KEYS[3..8]   idx:status:<s> for the six statuses of ARGV[5..10]
KEYS[9]      idx:tenant:{T}                (KEYS[1] when the run has no tenant)
KEYS[10..15] idx:tenant:{T}:status:<s>     (KEYS[1] when the run has no tenant)
KEYS[16]     idx:idem:{K}                  (KEYS[1] when the run has no idempotency key)

ARGV[1] run id    ARGV[2] index TTL ms    ARGV[3] now, epoch ms
ARGV[4] tenant of KEYS[9..15] as JSON, "null" for none    ARGV[5..10] the six statuses as JSON
ARGV[11] "1" when KEYS[16] is the run's idempotency key index

Returns 1 | 0 when the run no longer exists | -8 when ARGV[4] is not the run's tenant.
]]
local current = redis.call('HMGET', KEYS[1], 'status', 'tenantId', '_score')
local status, tenant, score = current[1], current[2], current[3]
if not status then
  return 0
end
if tenant ~= ARGV[4] then
  return -8
end
local run_id, ttl = ARGV[1], ARGV[2]
local function assert_entry(index)
  redis.call('ZADD', index, score, run_id)
  redis.call('PEXPIRE', index, ttl)
end
assert_entry(KEYS[2])
if tenant ~= 'null' then
  assert_entry(KEYS[9])
end
if ARGV[11] == '1' then
  assert_entry(KEYS[16])
end
for i = 1, 6 do
  if ARGV[4 + i] == status then
    assert_entry(KEYS[2 + i])
    if tenant ~= 'null' then assert_entry(KEYS[9 + i]) end
  else
    redis.call('ZREM', KEYS[2 + i], run_id)
    if tenant ~= 'null' then redis.call('ZREM', KEYS[9 + i], run_id) end
  end
end
redis.call('HSET', KEYS[1], '_indexed', ARGV[3])
return 1
