local id = ARGV[4]
local node_key = key('nodes', id)
local hb = key('heartbeat', id)
local n = read_fields(node_key)
if redis.call('EXISTS', hb) == 0 or not is_valid(n) then return {'notfound'} end
local ttl = digits(n.ttl, '15000')
if ttl == '0' then ttl = '15000' end
local ttl_ms = tonumber(ttl)
n.timestamp = fmt(NOW)
n.registeredAt = n.registeredAt or n.timestamp
n.ttl = ttl
local change = 'unchanged'
local rev = '0'
-- A health check's verdict holds against the node's own heartbeats.
if ARGV[5] ~= '' and ARGV[5] ~= (n.status or 'UP') and not held_output(n) then
  n.status = ARGV[5]
  change = 'updated'
end
redis.call('HSET', node_key, 'timestamp', n.timestamp, 'status', n.status or 'UP')
redis.call('EXPIRE', node_key, math.ceil(ttl_ms / 1000))
redis.call('SET', hb, '1', 'PX', ttl)
redis.call('ZADD', K_DEADLINES, NOW + ttl_ms, id)
if change == 'updated' then
  copy_last(id, n)
  rev = fmt(emit('updated', '', id, n))
elseif ARGV[6] == '1' then
  publish('NODE_UPDATED', id, n.address, n.services, '')
end
return {change, rev, n.address, n.services, n.timestamp, n.registeredAt, n.status or 'UP', n.metadata or '{}', n.ttl}
