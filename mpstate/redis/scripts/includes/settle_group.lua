-- settle_group(entries, all_runs, status_keys, status_names, run_id, score, version, status,
--              ttl, now, mine, flags): make one group's indexes say what a run's state says, if
-- no newer state has been settled there. The body of settle_index_entries (its header describes
-- the arguments, the entries format and the rules); commit_run and create_run call it too when
-- they settle the run's groups in their own script (a single Redis: every key is reachable).
-- status_keys are the group's zsets by status, status_names the statuses as JSON in the same
-- order (both empty for a group that does not index statuses). Returns 1 settled | 0 not.
local function settle_group(entries, all_runs, status_keys, status_names, run_id, score, version,
                            status, ttl, now, mine, flags)
  local created = string.find(flags, 'c', 1, true) ~= nil
  local renew = string.find(flags, 'r', 1, true) ~= nil
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
    local zsets = {all_runs, unpack(status_keys)}
    for i = 1, #zsets do
      local found = redis.call('ZSCORE', zsets[i], run_id)
      if found and tonumber(found) == tonumber(score) then
        redis.call('ZREM', zsets[i], run_id)
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

  local sweep = string.find(flags, 's', 1, true) ~= nil or cleared['?']
    or (entry == nil and not created)
    or (e_score ~= '' and (e_status == '' or (created and tonumber(e_score) ~= tonumber(score))))
  -- A settled entry of this incarnation means the run is in the all-runs zset already (both
  -- keys gain it, and get their TTL, together): only a sweep or a renewal adds it again.
  if sweep or renew or e_score == '' or tonumber(e_score) ~= tonumber(score) then
    index(all_runs)
  end
  local settled_status = ''
  for i = 1, #status_keys do
    local position = tostring(i)
    if status_names[i] == status then
      index(status_keys[i])
      settled_status = position
    elseif not pending and (sweep or position == e_status or cleared[position]) then
      redis.call('ZREM', status_keys[i], run_id)
    end
  end
  if pending then
    settled_status = ''
  end
  save(score, version, settled_status)
  return 1
end

-- settle_groups(first, o, score, version, status, now, flags): settle the run into each index
-- group whose keys start at KEYS[first], as listed by the script's options (indexing.py,
-- Indexer.in_script): o.groups "8,8,2", each group's key count (its entries hash, its all-runs
-- zset, then its status zsets); o.statuses |"pending"|"running"|..., the statuses in the order
-- of a group's status zsets; o.run the run id; o.index_ttl.
local function settle_groups(first, o, score, version, status, now, flags)
  local names = {}
  for name in string.gmatch(o.statuses, '[^|]+') do
    names[#names + 1] = name
  end
  local k = first
  for size in string.gmatch(o.groups, '%d+') do
    local last = k + tonumber(size) - 1
    local zsets = {}
    for i = k + 2, last do
      zsets[#zsets + 1] = KEYS[i]
    end
    settle_group(KEYS[k], KEYS[k + 1], zsets, #zsets > 0 and names or {}, o.run, score,
      tostring(version), status, o.index_ttl, now, '', flags)
    k = last + 1
  end
end
