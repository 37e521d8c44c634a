local ids = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
local removed = 0
for _, id in ipairs(ids) do
  local left = heartbeat_left(id)
  local n = read_fields(key('nodes', id))
  if left and is_valid(n) then
    redis.call('ZADD', K_DEADLINES, NOW + left, id)
  else
    local prev = last_known(id)
    local foreign = redis.call('SISMEMBER', K_FOREIGN, id) == 1
    local reason = 'expired'
    if left then
      reason = 'evicted'
    elseif n == nil and redis.call('SISMEMBER', K_INDEX, id) == 0 then
      -- Hash, heartbeat and index entry all gone: a peer removed the node (Titan's stop,
      -- `deregisterNode`) before anything noticed; an expired node keeps its index entry.
      reason = 'graceful'
    end
    if remove(id, prev) and is_valid(prev) then emit('deregistered', reason, id, prev, nil, foreign) end
    removed = removed + 1
  end
end
local first = redis.call('ZRANGE', K_DEADLINES, 0, 0, 'WITHSCORES')
local next_deadline = '-1'
if first[2] then next_deadline = first[2] end
return {removed, next_deadline, fmt(NOW)}
