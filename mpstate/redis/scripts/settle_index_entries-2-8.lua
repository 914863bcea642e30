--[[ settle_index_entries: make one group's indexes say what a run's state says, if no newer
state has been settled there. Idempotent and ordered, so a late or repeated call is harmless.

KEYS[1] the group's entries hash    KEYS[2] the group's zset of all its runs
KEYS[3..8] the group's zsets by status, in the order of ARGV[9..14] (absent for a group that
           does not index statuses)

ARGV[1] run id                  ARGV[5] index TTL ms
ARGV[2] score (created_at ms)   ARGV[6] now, epoch ms
ARGV[3] the run's version, "" to only clear the caller's pending mark (its write was refused)
ARGV[4] the run's status JSON, or gone (unquoted) when the run no longer exists
ARGV[7] the caller's pending-mark nonce, "" for none
ARGV[8] flags, each a letter: "c" this settles the create of the run id (a new incarnation);
        "s" take the run out of every other status zset (a reader's repair: it met an entry the
        run contradicts), not only out of those it may be in; "r" renew the TTLs of the keys it
        touches (a run's periodic re-assertion of its entries)
ARGV[9..14] the statuses as JSON

The entries hash keeps, per run, "<score>:<version>:<status>" last settled (score tells
incarnations of a re-created run id apart; status is the position of the status zset the run was
settled into, "" when unknown) and ";<expiry>:<nonce>:<added>" for each writer's live pending
mark (add_index_entries; added: the position of the status zset that writer added the run to).
A state older than the one settled changes nothing; a create's settle with another score
replaces an earlier incarnation's. While another writer's mark is live, entries are added but
never removed (the status is then recorded as unknown). Removing is targeted: a settle takes the
run out of the status it was settled into and of the statuses of the marks it clears, not out of
all five others; it sweeps them all only when that history is unknown (no entry, an unknown
status, a mark from before marks named their status) or when asked ("s"). A gone run's
entries are removed only while their score is the one the reader saw.
A key gets the index TTL when this adds a member or a field to it, or when asked ("r"); a key
with members already has one (every index key is created by adding a member, here or in
add_index_entries).
Returns 1 settled | 0 nothing to settle (older state, only a mark cleared, or a pending mark).
]]
local run_id, score, version, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, now, mine = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local created = string.find(ARGV[8], 'c', 1, true) ~= nil
local renew = string.find(ARGV[8], 'r', 1, true) ~= nil
local entries = KEYS[1]
local entry = redis.call('HGET', entries, run_id)
local e_score, e_version, e_status, marks = '', '', '', ''
if entry then
  local settled
  settled, marks = string.match(entry, '^([^;]*)(.*)$')
  e_score, e_version, e_status = string.match(settled, '^([^:]*):([^:]*):?(.*)$')
end
local live = {}
-- Statuses the run may be in because of marks cleared here ("?": a mark that did not say).
local cleared = {}
local any_cleared = false
for expiry, nonce, added in string.gmatch(marks, ';(%d+):([^;:]*):?([^;]*)') do
  if nonce ~= mine and tonumber(expiry) > now then
    live[#live + 1] = ';' .. expiry .. ':' .. nonce .. ':' .. added
  else
    cleared[added ~= '' and added or '?'] = true
    any_cleared = true
  end
end
local pending = #live > 0

local function save(s, v, st)
  if s == '' and not pending then
    redis.call('HDEL', entries, run_id)
    return
  end
  local added = redis.call('HSET', entries, run_id, s .. ':' .. v .. ':' .. st .. table.concat(live))
  if added == 1 or renew then
    redis.call('PEXPIRE', entries, ttl)
  end
end

-- Add run_id to a zset, giving the key the TTL when it gains a member (or when asked).
local function index(key)
  if redis.call('ZADD', key, score, run_id) == 1 or renew then
    redis.call('PEXPIRE', key, ttl)
  end
end

if status == 'gone' then
  if pending then
    save(e_score, e_version, '')
    return 0
  end
  for i = 2, #KEYS do
    local found = redis.call('ZSCORE', KEYS[i], run_id)
    if found and tonumber(found) == tonumber(score) then
      redis.call('ZREM', KEYS[i], run_id)
    end
  end
  if e_score == '' or tonumber(e_score) <= tonumber(score) then
    redis.call('HDEL', entries, run_id)
  end
  return 1
end

local older = version == ''
if not older and e_score ~= '' and e_version ~= '' then
  local settled_score, new_score = tonumber(e_score), tonumber(score)
  if created and new_score ~= settled_score then
    older = false
  else
    older = new_score < settled_score
      or (new_score == settled_score and tonumber(version) < tonumber(e_version))
  end
end
if older then
  if entry then
    -- Cleared marks may have left entries this settle does not remove: the next one sweeps.
    save(e_score, e_version, any_cleared and '' or e_status)
  end
  return 0
end

local sweep = string.find(ARGV[8], 's', 1, true) ~= nil or cleared['?']
  or (entry == nil and not created)
  or (e_score ~= '' and (e_status == '' or (created and tonumber(e_score) ~= tonumber(score))))
index(KEYS[2])
local settled_status = ''
for i = 3, #KEYS do
  local position = tostring(i - 2)
  if ARGV[i + 6] == status then
    index(KEYS[i])
    settled_status = position
  elseif not pending and (sweep or position == e_status or cleared[position]) then
    redis.call('ZREM', KEYS[i], run_id)
  end
end
if pending then
  settled_status = ''
end
save(score, version, settled_status)
return 1
