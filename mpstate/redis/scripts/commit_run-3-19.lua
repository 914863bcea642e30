--[[ commit_run: apply a patch and/or append events to one run, after checking its guards.

KEYS[1] run hash    KEYS[2] events stream    KEYS[3] spill hash of write outcomes (operations.lua)
KEYS[4..] on a single Redis only, the run's index groups this script settles itself when the
          status changes (o.groups; absent on a cluster, where they are follow-up writes)

ARGV[1] the options, one JSON object of strings (writes.py, _commit_options; "" = none):
  tenant      tenant scope as JSON           fence      the caller's lock fence
  unchanged   |"status"|... left unchanged (cancel)      expected   expected version
  allowed     |"status"|... allowed before the new status            bump       "1": version + 1
  events      n, the number of events        ends       "1" when an event ends the log
  status      the new status as JSON         placement  "<tenant JSON>|<score>" the caller
  now         epoch ms                                  indexed the new status under
  run_ttl     run TTL ms                     op_ttl     how long op's outcome is kept, ms
  renew_after renew the run's TTL when it was last renewed this many ms ago or more
  reindex_after  re-assert index entries when last re-asserted more than this many ms ago
  document    "1" to return the run's JSON
  op          this write's operation id (percent-escaped), recorded in _ops (operations.lua)
  groups, statuses, run, index_ttl   the index groups in KEYS[4..] (settle_group.lua), or ""
ARGV[2..] n event JSON documents, then field, JSON value pairs (updatedAt included when bumping).
Options travel packed, as BullMQ packs its scripts' options, so adding one renumbers nothing.

Guards, in order (mpstate/changes.py): not found {-1} | stale fence {-5, fence} |
unchanged {0, {}, run JSON} | version conflict {-4, version} | invalid transition {-6, status} |
log ended {-7, status} | the status changes but the placement is not this run's tenant and score,
so the caller's index entries are not this run's {-8, tenant JSON, score}.
Returns {1, {seqs}, run JSON or "", reindex, version, previous status JSON} when written (reindex
is 1 when the run is due to re-assert its index entries, which the caller does), or
{2, "version:seq,seq"} when this op was already applied (a client retry after a lost reply).
Writes: one HSET (the fields, version, _seq, _ended, the bookkeeping times and _ops, this op's
outcome; older outcomes past 1 KB of them go to the spill hash), the n events as 0-<seq> with
consecutive seqs; the run's and its log's TTLs only when due (renewed at most every renew_after
ms, so keys live between run_ttl - renew_after and run_ttl after the last write). On a
cluster, index entries are follow-up writes the caller makes in each index's own slot
(indexing.py); on a single Redis a status change settles the groups in KEYS[4..] here, after
the write, with the same rules (settle_group.lua), so it takes one script.
]]
--- @include "run_document"
--- @include "settle_group"
--- @include "operations"

local o = cjson.decode(ARGV[1])
local run = KEYS[1]
local current = redis.call('HMGET', run, 'status', 'tenantId', '_fence', 'version', '_ended',
  '_score', '_indexed', '_seq', '_renewed', '_ops', '_spill')
local status, tenant, fence, version, ended, score, indexed, seq, renewed, ops =
  current[1], current[2], current[3], current[4], current[5], current[6], current[7], current[8],
  current[9], current[10] or ''
local now = tonumber(o.now)
local done = recorded_outcome(ops, current[11], KEYS[3], o.op, now)
if done then
  return {2, done}
end
if not status or (o.tenant ~= '' and tenant ~= o.tenant) then
  return {-1}
end
if o.fence ~= '' and tonumber(o.fence) ~= tonumber(fence) then
  return {-5, fence}
end
if o.unchanged ~= '' and string.find(o.unchanged, '|' .. status .. '|', 1, true) then
  return {0, {}, run_document(run)}
end
if o.expected ~= '' and tonumber(o.expected) ~= tonumber(version) then
  return {-4, version}
end
local new_status = o.status
if new_status ~= '' and not string.find(o.allowed, '|' .. status .. '|', 1, true) then
  return {-6, status}
end
local n_events = tonumber(o.events)
if n_events > 0 and ended == '1' then
  return {-7, status}
end
if new_status ~= '' and new_status ~= status and o.placement ~= tenant .. '|' .. score then
  return {-8, tenant, score}
end

-- Every guard passed: write, in one HSET.
local fields = {}
for i = 2 + n_events, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
version = tonumber(version)
if o.bump == '1' then
  version = version + 1
  fields[#fields + 1] = 'version'
  fields[#fields + 1] = version
end
seq = tonumber(seq)
local seqs = {}
for i = 1, n_events do
  seqs[i] = seq + i
end
if n_events > 0 then
  fields[#fields + 1] = '_seq'
  fields[#fields + 1] = seq + n_events
end
if o.ends == '1' then
  fields[#fields + 1] = '_ended'
  fields[#fields + 1] = '1'
end
local reindex = 0
if now - tonumber(indexed or 0) > tonumber(o.reindex_after) then
  reindex = 1
  fields[#fields + 1] = '_indexed'
  fields[#fields + 1] = o.now
end
local renew = now - tonumber(renewed or 0) >= tonumber(o.renew_after)
if renew then
  fields[#fields + 1] = '_renewed'
  fields[#fields + 1] = o.now
end
local spilled
ops, spilled = with_operation(ops, o.op, tostring(version) .. ':' .. table.concat(seqs, ','), now,
  tonumber(o.op_ttl), KEYS[3])
fields[#fields + 1] = '_ops'
fields[#fields + 1] = ops
if spilled then
  fields[#fields + 1] = '_spill'
  fields[#fields + 1] = spilled
end
redis.call('HSET', run, unpack(fields))
for i = 1, n_events do
  redis.call('XADD', KEYS[2], '0-' .. seqs[i], 'e', ARGV[1 + i])
end
if renew then
  redis.call('PEXPIRE', run, o.run_ttl)
  redis.call('PEXPIRE', KEYS[2], o.run_ttl)
end
if o.groups ~= '' and new_status ~= '' and new_status ~= status then
  settle_groups(4, o, score, version, new_status, now, '')
end
local document = ''
if o.document == '1' then
  document = run_document(run)
end
return {1, seqs, document, reindex, version, status}
