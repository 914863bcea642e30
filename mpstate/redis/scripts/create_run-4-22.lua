--[[ create_run: store a new run and its run-created event, atomically, in the run's slot.

KEYS[1] run hash    KEYS[2] events stream    KEYS[3] void set
KEYS[4] spill hash of write outcomes (operations.lua)
KEYS[5..] on a single Redis only, the run's index groups this script settles itself (o.groups;
          absent on a cluster, where they are written around it)

ARGV[1] the options, one JSON object of strings (writes.py, RunWriter.insert; "" = none):
  existing  "1" to return an existing run instead of refusing
  score     created_at, epoch ms (the index score)
  token     the claim token of the run's idempotency key
  now       epoch ms
  run_ttl   run TTL ms                op_ttl    how long op's outcome is kept, ms
  op        this create's operation id, recorded in the run's _ops (operations.lua)
  events    n, the number of events (run-created, then what the run was created with)
  ends      "1" when the last of them ends the log
  groups, statuses, run, index_ttl   the index groups in KEYS[5..] (settle_group.lua), or ""
  version, status   the new run's version and status JSON, settled into those groups
ARGV[2..1+n] the events' JSON, run-created first
ARGV[2+n..] field, JSON value, field, JSON value ... (the run document)

Returns {1} created | {2} this op already created the run (retry) |
        {-2, run JSON} run id exists (the JSON only with "existing") |
        {-9} the claim on the idempotency key was voided (void_claim): claim again.
Events written: run-created as 0-1, then the others as 0-2 .. 0-n (a run created already started
logs run-started with it: one write). On a cluster the index entries are written around this
script (indexing.py); on a single Redis it settles them itself, after the write, as a new
incarnation of the run id ("c"), with the same rules (settle_group.lua).
]]
--- @include "run_document"
--- @include "settle_group"
--- @include "operations"

local o = cjson.decode(ARGV[1])
local now = tonumber(o.now)
local found = redis.call('HMGET', KEYS[1], 'status', '_ops', '_spill')
if found[1] then
  if recorded_outcome(found[2] or '', found[3], KEYS[4], o.op, now) then
    return {2}
  end
  if o.existing == '1' then
    return {-2, run_document(KEYS[1])}
  end
  return {-2}
end
if o.token ~= '' and redis.call('SISMEMBER', KEYS[3], o.token) == 1 then
  return {-9}
end

local n_events = tonumber(o.events)
redis.call('HSET', KEYS[1], '_seq', n_events, '_fence', 0, '_score', o.score, '_indexed', o.now,
  '_renewed', o.now, '_ended', o.ends == '1' and '1' or '0',
  '_ops', (with_operation('', o.op, 'created', now, tonumber(o.op_ttl), KEYS[4])),
  unpack(ARGV, 2 + n_events))
redis.call('PEXPIRE', KEYS[1], o.run_ttl)
-- A stream left by a deleted run refuses 0-1 (its top id is higher): only then is it removed.
local first = redis.pcall('XADD', KEYS[2], '0-1', 'e', ARGV[2])
if type(first) == 'table' and first.err then
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[2])
end
for i = 2, n_events do
  redis.call('XADD', KEYS[2], '0-' .. i, 'e', ARGV[1 + i])
end
redis.call('PEXPIRE', KEYS[2], o.run_ttl)
if o.groups ~= '' then
  settle_groups(5, o, o.score, o.version, o.status, tonumber(o.now), 'c')
end
return {1}
