--[[ prune_index: drop index entries of runs found missing, unless they were re-added since.

KEYS[1] an index zset
ARGV    member, score, member, score ... (as read when the run was found missing)

An entry is removed only while its score is still the one read: a run re-created under the same
id since then has a new created_at score and keeps its entry. Returns the number removed.
]]
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
