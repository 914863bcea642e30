--[[ claim_idempotency_key: claim an idempotency key for a run about to be created.

KEYS[1] idem:{T:K}
ARGV[1] the claim, "<claim token>:<run id>"    ARGV[2] a stale claim to take over, "" for none
ARGV[3] idempotency TTL ms

Returns {1} claimed (or this claim holds it already: a retry) | {0, current claim} held by
another claim. A stale claim is taken over only while it is still the exact value the caller
found stale (its run was voided with void_claim, or holds another key), so two callers taking
over one stale claim cannot both win.
]]
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return {1}
end
if current and current ~= ARGV[2] then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {1}
