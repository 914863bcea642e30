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
        run contradicts), not only out of those it may be in; "r" renew the TTLs of the
        group's keys (a run's periodic re-assertion of its entries)
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
The entries hash's "" field (no run id is empty) is the group's TTL record, "<renewed>:<keys>":
when every key of the group was last given the index TTL, and which zsets are known to hold it
since ('a' all runs, '1'.. a status zset by position). A zset gets the TTL when it gains a
member and is not known to hold one (it may be new: a zset emptied by a removal is deleted, so
a removal drops it from the record); every key of the group gets it when the renewal is due (a
tenth of the TTL after the last, or asked: "r"), and a hash without a record (a new one) is
due. So keys get the TTL when created or due, not on every write.
Returns 1 settled | 0 nothing to settle (older state, only a mark cleared, or a pending mark).
]]
--- @include "settle_group"

local status_keys, status_names = {}, {}
for i = 3, #KEYS do
  status_keys[#status_keys + 1] = KEYS[i]
  status_names[#status_names + 1] = ARGV[i + 6]
end
return settle_group(KEYS[1], KEYS[2], status_keys, status_names, ARGV[1], ARGV[2], ARGV[3],
  ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8])
