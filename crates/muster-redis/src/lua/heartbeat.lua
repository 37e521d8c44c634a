local new = {address = ARGV[5], services = ARGV[6], timestamp = fmt(NOW), status = ARGV[10],
             metadata = ARGV[11], ttl = ARGV[9]}
local ttl_ms = tonumber(ARGV[9])
local old = read_fields(node_key)
if hb_alive == nil then hb_alive = redis.call('EXISTS', hb) == 1 end
local alive = hb_alive and old ~= nil and old.address and old.address ~= ''
  and old.timestamp and old.timestamp ~= '' and (old.services == new.services or valid_json(old.services))
-- ARGV[14]: the stored node the caller's access was decided on ('' for no condition).
if ARGV[14] ~= '' and ARGV[14] ~= stored_names(is_valid(old) and old or nil) then
  if hb_alive == false then redis.call('DEL', hb) end
  return {'conflict', '', '0', '0', '0', ''}
end
local full, others = over_limit(id, new.services, ARGV[13])
if full then
  -- The fast path set the heartbeat of a node that was not alive: take it back, change nothing.
  if hb_alive == false then redis.call('DEL', hb) end
  return {'limit', full, fmt(others), '0', '0', ''}
end
local change = 'registered'
local expired_rev = '0'
local kept = ''
if alive then
  new.registeredAt = old.registeredAt or old.timestamp
  local output = held_output(old)
  if output then
    keep_verdict(old, new, output)
    -- The caller learns the status and metadata written in place of what it asked for.
    if new.status == 'DOWN' then kept = new.metadata end
  end
  if old.address ~= new.address or old.services ~= new.services or (old.status or 'UP') ~= new.status
      or (old.metadata or '{}') ~= new.metadata then
    change = 'updated'
  else
    change = 'unchanged'
  end
else
  -- Leftovers of an expired, removed or broken node: end it first (with an event if it was tracked).
  if old or redis.call('ZSCORE', K_DEADLINES, id) then
    local prev = last_known(id)
    local reason = vanish_reason(id, old ~= nil)
    local foreign = redis.call('SISMEMBER', K_FOREIGN, id) == 1
    if remove(id, prev) and is_valid(prev) then
      expired_rev = fmt(emit('deregistered', reason, id, prev, nil, foreign))
    end
  end
  new.registeredAt = new.timestamp
end
redis.call('HSET', node_key, 'address', new.address, 'services', new.services,
  'timestamp', new.timestamp, 'registeredAt', new.registeredAt, 'status', new.status,
  'metadata', new.metadata, 'ttl', new.ttl)
redis.call('EXPIRE', node_key, ARGV[8])
redis.call('SET', hb, '1', 'PX', ARGV[9])
redis.call('SADD', K_INDEX, id)
redis.call('SADD', K_TRACKED, id)
redis.call('ZADD', K_DEADLINES, NOW + ttl_ms, id)
if change == 'registered' then
  redis.call('SREM', K_FOREIGN, id)
end
if change ~= 'unchanged' and (change == 'registered' or old.services ~= new.services) then
  local keep = service_names(new.services)
  if change == 'updated' then
    for name in pairs(service_names(old.services)) do
      if not keep[name] then redis.call('SREM', key('index:services', name), id) end
    end
  end
  for name in pairs(keep) do redis.call('SADD', key('index:services', name), id) end
end
local rev = '0'
if change ~= 'unchanged' then
  copy_last(id, new)
  rev = fmt(emit(change, '', id, new, change == 'updated' and old.services or nil))
elseif ARGV[12] == '1' then
  publish('NODE_UPDATED', id, new.address, new.services, '')
end
return {change, new.registeredAt, rev, expired_rev, new.timestamp, kept}
