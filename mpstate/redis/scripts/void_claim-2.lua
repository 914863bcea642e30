--[[ void_claim: call off the create of a run that holds a claim but does not exist yet.

KEYS[1] run hash    KEYS[2] run's void set
ARGV[1] the claim token being voided    ARGV[2] idempotency TTL ms

A caller that finds an idempotency key claimed for a run that does not exist cannot tell a
creator that died from one that is slow. Voiding settles it in the run's own slot: create_run
refuses a create carrying a voided claim token, so once this returns {1} the claimed run can no
longer be created under that claim and the key may be taken over.
Returns {1} voided | {0, run JSON} the run exists (created before this call).
]]
--- @include "run_document"

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, run_document(KEYS[1])}
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1}
