local id = ARGV[4]
local old = read_fields(key('nodes', id))
if redis.call('EXISTS', key('heartbeat', id)) == 0 or not is_valid(old) then return {'notfound'} end
-- ARGV[11]: the stored node the caller's access was decided on ('' for no condition).
if ARGV[11] ~= '' and ARGV[11] ~= stored_names(old) then return {'conflict'} end
local new = {address = old.address, services = old.services, timestamp = old.timestamp,
             registeredAt = old.registeredAt or old.timestamp, status = old.status or 'UP',
             metadata = old.metadata or '{}', ttl = old.ttl or '0'}
if ARGV[5] ~= '' then new.address = ARGV[5] end
if ARGV[6] ~= '' then new.services = ARGV[6] end
if ARGV[7] ~= '' then new.status = ARGV[7] end
if ARGV[8] ~= '' then new.metadata = ARGV[8] end
-- ARGV[10] = '1': the health check's own verdict, the one write that may lift it.
if ARGV[10] ~= '1' then
  local output = held_output(old)
  if output then keep_verdict(old, new, output) end
end
local changed = new.address ~= old.address or new.services ~= old.services
  or new.status ~= (old.status or 'UP') or new.metadata ~= (old.metadata or '{}')
if new.services ~= old.services then
  local full, others = over_limit(id, new.services, ARGV[9])
  if full then return {'limit', full, fmt(others)} end
end
local rev = '0'
if changed then
  new.timestamp = fmt(NOW)
  redis.call('HSET', key('nodes', id), 'address', new.address, 'services', new.services,
    'timestamp', new.timestamp, 'status', new.status, 'metadata', new.metadata)
  if new.services ~= old.services then
    local keep = service_names(new.services)
    for name in pairs(service_names(old.services)) do
      if not keep[name] then redis.call('SREM', key('index:services', name), id) end
    end
    for name in pairs(keep) do redis.call('SADD', key('index:services', name), id) end
  end
  copy_last(id, new)
  rev = fmt(emit('updated', '', id, new, old.services))
end
return {changed and 'updated' or 'unchanged', rev, new.address, new.services, new.timestamp,
        new.registeredAt, new.status, new.metadata, new.ttl}
