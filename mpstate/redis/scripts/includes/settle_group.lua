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
  local found = redis.call('HMGET', entries, run_id, '')
  local entry = found[1]
  -- The group's TTL record (its entries hash's "" field; no run id is empty): when the group's
  -- keys were last given the index TTL, and which of them are known to hold it since ('a' the
  -- all-runs zset, '1'.. a status zset by position). Keys get the TTL when they are created (a
  -- zset gains a member and is not known to hold one) or when the group's renewal is due (every
  -- tenth of the TTL, or when asked: "r"), not on every write.
  local renewed, known = string.match(found[2] or '', '^(%d+):(.*)$')
  local renew = string.find(flags, 'r', 1, true) ~= nil or renewed == nil
    or now - tonumber(renewed) >= math.floor(tonumber(ttl) / 10)
  known = known or ''
  local record_changed = renew
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

  -- Give every key of the group the TTL (a renewal), and note which exist to hold it.
  local function renew_all()
    local letters = {}
    if redis.call('PEXPIRE', all_runs, ttl) == 1 then
      letters[1] = 'a'
    end
    for i = 1, #status_keys do
      if redis.call('PEXPIRE', status_keys[i], ttl) == 1 then
        letters[#letters + 1] = tostring(i)
      end
    end
    known = table.concat(letters)
  end

  -- Write the run's entry (unless s is nil) and, when it changed, the TTL record: one HSET (the
  -- hash gets the TTL in a renewal, which a hash without a record is due: a new one has none).
  local function save(s, v, st)
    if renew then
      renew_all()
      renewed = now
    end
    local fields = {}
    if s == '' and not pending then
      redis.call('HDEL', entries, run_id)
    elseif s ~= nil then
      fields = {run_id, s .. ':' .. v .. ':' .. st .. table.concat(live)}
    end
    if record_changed then
      fields[#fields + 1] = ''
      fields[#fields + 1] = tostring(renewed) .. ':' .. known
    end
    if #fields > 0 then
      redis.call('HSET', entries, unpack(fields))
    end
    if renew then
      redis.call('PEXPIRE', entries, ttl)
    end
  end

  -- Add run_id to a zset; a key not known to hold the TTL gets it when it gains a member (it
  -- may have just been created). A renewal gives every key the TTL in save.
  local function index(key, letter)
    if redis.call('ZADD', key, score, run_id) == 1 and not renew
        and not string.find(known, letter, 1, true) then
      redis.call('PEXPIRE', key, ttl)
      known = known .. letter
      record_changed = true
    end
  end

  -- Take run_id out of a zset, which may leave it empty, so deleted: no longer known to hold
  -- the TTL.
  local function unindex(key, letter)
    if redis.call('ZREM', key, run_id) == 1 and string.find(known, letter, 1, true) then
      known = string.gsub(known, letter, '')
      record_changed = true
    end
  end

  if status == 'gone' then
    if pending then
      save(e_score, e_version, '')
      return 0
    end
    local zsets = {all_runs, unpack(status_keys)}
    for i = 1, #zsets do
      local at = redis.call('ZSCORE', zsets[i], run_id)
      if at and tonumber(at) == tonumber(score) then
        unindex(zsets[i], i == 1 and 'a' or tostring(i - 1))
      end
    end
    if e_score == '' or tonumber(e_score) <= tonumber(score) then
      save('', '', '')
    elseif record_changed then  -- a newer incarnation's entry stays as it is
      save(nil)
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
    index(all_runs, 'a')
  end
  local settled_status = ''
  for i = 1, #status_keys do
    local position = tostring(i)
    if status_names[i] == status then
      index(status_keys[i], position)
      settled_status = position
    elseif not pending and (sweep or position == e_status or cleared[position]) then
      unindex(status_keys[i], position)
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
