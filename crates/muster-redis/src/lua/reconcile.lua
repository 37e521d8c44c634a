local counts = {0, 0, 0}
local function adopt_or_clean(id)
  local n = read_fields(key('nodes', id))
  local left = heartbeat_left(id)
  if left and is_valid(n) then
    n.registeredAt = n.timestamp
    redis.call('ZADD', K_DEADLINES, NOW + left, id)
    redis.call('SADD', K_FOREIGN, id)
    redis.call('SADD', K_TRACKED, id)
    remember(id, n)
    for name in pairs(service_names(n.services)) do redis.call('SADD', key('index:services', name), id) end
    copy_last(id, n)
    emit('registered', '', id, n, nil, true)
    counts[1] = counts[1] + 1
  else
    -- Dead, or broken by the rule: what Titan's reader deletes.
    redis.call('DEL', key('nodes', id), key('heartbeat', id))
    redis.call('SREM', K_INDEX, id)
    counts[3] = counts[3] + 1
  end
end
local function gone(id)
  local prev = last_known(id)
  local reason = vanish_reason(id, false)
  if remove(id, prev) and is_valid(prev) then emit('deregistered', reason, id, prev, nil, true) end
  counts[3] = counts[3] + 1
end
local function compare(id, seen_address, seen_services)
  local v = redis.call('HMGET', key('nodes', id), 'address', 'services')
  -- The common case, unchanged since last seen (and valid then), costs one command and two
  -- comparisons of interned strings.
  if v[1] == seen_address and v[2] == seen_services then return end
  local n = {address = v[1], services = v[2], timestamp = redis.call('HGET', key('nodes', id), 'timestamp')}
  if not is_valid(n) then
    -- Broken while its heartbeat lives: evicted now. (Expired nodes are the sweep's.)
    if (n.address or n.services or n.timestamp) and heartbeat_left(id) then
      local prev = last_known(id)
      if remove(id, prev) and is_valid(prev) then emit('deregistered', 'evicted', id, prev, nil, true) end
      counts[3] = counts[3] + 1
    end
    return
  end
  local last = read_fields(key('last', id)) or {}
  local old_services = last.services
  n.registeredAt = last.registeredAt or n.timestamp
  n.ttl = last.ttl
  remember(id, n)
  if old_services ~= n.services then
    local keep = service_names(n.services)
    for name in pairs(service_names(old_services)) do
      if not keep[name] then redis.call('SREM', key('index:services', name), id) end
    end
    for name in pairs(keep) do redis.call('SADD', key('index:services', name), id) end
  end
  copy_last(id, n)
  emit('updated', '', id, n, old_services, true)
  counts[2] = counts[2] + 1
end
-- The nodes to look at (candidates of a full pass, or hinted). A Titan peer's unchanged
-- heartbeat costs two commands.
for i = 5, #ARGV do
  local id = ARGV[i]
  local seen = redis.call('HMGET', K_SEEN, 'a:' .. id, 's:' .. id)
  if seen[1] then
    local v = redis.call('HMGET', key('nodes', id), 'address', 'services')
    if v[1] == seen[1] and v[2] == seen[2] then
      -- unchanged
    elseif redis.call('SISMEMBER', K_INDEX, id) == 0 then
      gone(id)
    else
      compare(id, seen[1], seen[2])
    end
  else
    local tracked = redis.call('SISMEMBER', K_TRACKED, id) == 1
    local indexed = redis.call('SISMEMBER', K_INDEX, id) == 1
    if indexed and not tracked then
      adopt_or_clean(id)
    elseif tracked and not indexed then
      gone(id)
    end
  end
end
return counts
