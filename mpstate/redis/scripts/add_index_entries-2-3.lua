--[[ add_index_entries: put a run into one group's indexes *before* the write that makes it belong.

KEYS[1] the group's entries hash    KEYS[2..] index zsets of the group to add the run to
ARGV[1] run id    ARGV[2] score (created_at, epoch ms)    ARGV[3] index TTL ms
ARGV[4] this writer's pending mark "<expiry epoch ms>:<nonce>:<added>" (added: the position of
        the status zset it adds the run to, "" for none)    ARGV[5] now, epoch ms

Adding first means an index never misses a run whose write was acknowledged, even when the
writer dies before its follow-up (settle_index_entries): at worst an index holds an extra entry,
which readers check against the run and repair. ZADD NX keeps an existing entry's score. The
pending mark stops other writers and readers from removing these entries until this writer has
settled them or the mark expires; every writer's mark is kept (expired ones are dropped), so a
second writer cannot lift the first one's.
The entries hash holds, per run, "<score>:<version>:<status>" settled so far, then
";<expiry>:<nonce>:<added>" for each live mark (settle_index_entries reads both).
A key gets the index TTL when this adds a member or a field to it (which is how a key is
created here), not on every call; the settle that follows renews the group's keys when due
(settle_index_entries' TTL record).
Returns 1.
]]
local run_id, ttl, now = ARGV[1], ARGV[3], tonumber(ARGV[5])
for i = 2, #KEYS do
  if redis.call('ZADD', KEYS[i], 'NX', ARGV[2], run_id) == 1 then
    redis.call('PEXPIRE', KEYS[i], ttl)  -- a new member, perhaps a new key: it gets the TTL
  end
end
local entry = redis.call('HGET', KEYS[1], run_id) or ':'
local settled, marks = string.match(entry, '^([^;]*)(.*)$')
local kept = {settled}
for expiry, rest in string.gmatch(marks, ';(%d+):([^;]*)') do  -- rest: "<nonce>:<added>"
  if tonumber(expiry) > now then
    kept[#kept + 1] = ';' .. expiry .. ':' .. rest
  end
end
kept[#kept + 1] = ';' .. ARGV[4]
if redis.call('HSET', KEYS[1], run_id, table.concat(kept)) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
