local id = ARGV[4]
local node_key = key('nodes', id)
local hb = key('heartbeat', id)
local hb_alive = nil
local v = redis.call('HMGET', node_key, 'address', 'services', 'status', 'metadata', 'timestamp', 'registeredAt')
if v[1] == ARGV[5] and v[2] == ARGV[6] and (v[3] or 'UP') == ARGV[10] and (v[4] or '{}') == ARGV[11]
    and v[5] and v[5] ~= '' then
  -- Refresh the heartbeat, learning whether it was still there.
  hb_alive = redis.call('SET', hb, '1', 'PX', ARGV[9], 'GET') ~= false
  if hb_alive then
    redis.call('HSET', node_key, 'timestamp', fmt(NOW), 'ttl', ARGV[9])
    redis.call('EXPIRE', node_key, ARGV[8])
    redis.call('ZADD', K_DEADLINES, NOW + tonumber(ARGV[9]), id)
    if ARGV[12] == '1' then publish('NODE_UPDATED', id, ARGV[5], ARGV[6], '') end
    return {'unchanged', v[6] or v[5], '0', '0', fmt(NOW), ''}
  end
end
