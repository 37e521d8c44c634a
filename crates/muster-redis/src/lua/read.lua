local mode = ARGV[4]
local writable = ARGV[5] == 'rw'
local bulk, rows = {}, {}
local function chunks(list, size, f)
  for i = 1, #list, size do
    local part = {}
    for j = i, math.min(i + size - 1, #list) do part[#part + 1] = list[j] end
    f(part, i - 1)
  end
end
local revision = redis.call('GET', K_REV) or '0'
local view_body, view_csv
if mode == 'active' or mode == 'service' then
  local foreign = {}
  for _, id in ipairs(redis.call('SMEMBERS', K_FOREIGN)) do foreign[id] = true end
  -- The index and the tracked set disagree while Titan peers' changes wait for reconciliation.
  local agree = redis.call('SCARD', K_INDEX) == redis.call('SCARD', K_TRACKED)
  local untracked = {}
  if not agree then
    for _, id in ipairs(redis.call('SDIFF', K_INDEX, K_TRACKED)) do untracked[#untracked + 1] = id end
  end
  local candidates = {}
  if mode == 'active' then
    for id in pairs(foreign) do rows[#rows + 1] = id end
    for _, id in ipairs(untracked) do rows[#rows + 1] = id end
    local view = agree and redis.call('GET', K_VIEW)
    if view then
      local vrev, vuntil, vlen = string.match(view, '^(%d+)|(%d+)|(%d+)|')
      if vrev == revision and tonumber(vuntil) > NOW then
        local header = #vrev + #vuntil + #vlen + 3
        view_csv = string.sub(view, header + 1, header + tonumber(vlen))
        view_body = string.sub(view, header + tonumber(vlen) + 1)
      end
    end
    if not view_body then
      local z = redis.call('ZRANGEBYSCORE', K_DEADLINES, '(' .. fmt(NOW), '+inf', 'WITHSCORES')
      for i = 1, #z, 2 do
        if not foreign[z[i]] then candidates[#candidates + 1] = {z[i], z[i + 1]} end
      end
    end
  else
    local name = ARGV[6]
    for id in pairs(foreign) do
      if redis.call('SISMEMBER', key('index:services', name), id) == 1 then rows[#rows + 1] = id end
    end
    -- Not adopted yet: read, and filtered by the reader.
    for _, id in ipairs(untracked) do rows[#rows + 1] = id end
    local ids = redis.call('SMEMBERS', key('index:services', name))
    chunks(ids, 500, function(part)
      local scores = redis.call('ZMSCORE', K_DEADLINES, unpack(part))
      for j, id in ipairs(part) do
        if scores[j] and tonumber(scores[j]) > NOW and not foreign[id] then candidates[#candidates + 1] = {id, scores[j]} end
      end
    end)
  end
  if agree then
    bulk = candidates
  else
    chunks(candidates, 500, function(part)
      local ids = {}
      for j, entry in ipairs(part) do ids[j] = entry[1] end
      local member = redis.call('SMISMEMBER', K_INDEX, unpack(ids))
      for j, entry in ipairs(part) do
        if member[j] == 1 then bulk[#bulk + 1] = entry end
      end
    end)
  end
  if not agree then writable = false end
elseif mode == 'all' then
  rows = redis.call('SMEMBERS', K_INDEX)
  writable = false
else
  for i = 6, #ARGV do rows[#rows + 1] = ARGV[i] end
  writable = false
end
local jsons, deadlines = {}, {}
chunks(bulk, 500, function(part)
  local ids = {}
  for j, entry in ipairs(part) do ids[j] = entry[1] end
  local infos = redis.call('HMGET', K_INFO, unpack(ids))
  for j, entry in ipairs(part) do
    if infos[j] then
      jsons[#jsons + 1] = infos[j]
      deadlines[#deadlines + 1] = entry[2]
    else
      rows[#rows + 1] = entry[1]
    end
  end
end)
if not view_body then
  view_body = '[' .. table.concat(jsons, ',') .. ']'
  view_csv = table.concat(deadlines, ',')
  if mode == 'active' and writable then
    local until_ms = math.huge
    for _, d in ipairs(deadlines) do until_ms = math.min(until_ms, tonumber(d)) end
    if until_ms == math.huge then until_ms = NOW + 60000 end
    redis.call('SET', K_VIEW, revision .. '|' .. fmt(until_ms) .. '|' .. #view_csv .. '|' .. view_csv .. view_body,
      'PX', math.max(1, until_ms - NOW))
  end
end
local out = {revision, view_body, view_csv}
for _, id in ipairs(rows) do
  local v = redis.call('HMGET', key('nodes', id), unpack(FIELDS))
  if v[1] or v[2] or v[3] or mode == 'all' then
    out[#out + 1] = id
    out[#out + 1] = tostring(redis.call('EXISTS', key('heartbeat', id)))
    for i = 1, 7 do out[#out + 1] = v[i] or '' end
  end
end
return out
