local id = ARGV[4]
-- ARGV[6]: the stored node the caller's access was decided on ('' for no condition).
if ARGV[6] ~= '' then
  local stored = read_fields(key('nodes', id))
  if ARGV[6] ~= stored_names(is_valid(stored) and stored or nil) then return {'conflict'} end
end
local present = redis.call('EXISTS', key('nodes', id)) == 1 or redis.call('SISMEMBER', K_INDEX, id) == 1
  or redis.call('ZSCORE', K_DEADLINES, id)
if not present then return {0, '0'} end
local alive = redis.call('EXISTS', key('heartbeat', id)) == 1
local prev = last_known(id)
local reason = vanish_reason(id, redis.call('EXISTS', key('nodes', id)) == 1)
local foreign = redis.call('SISMEMBER', K_FOREIGN, id) == 1
local tracked = remove(id, prev)
local rev = '0'
if alive then
  if is_valid(prev) then rev = fmt(emit('deregistered', ARGV[5], id, prev)) end
  return {1, rev}
end
-- Already dead: an end the sweep would have announced (quietly for a Titan peer's node).
if tracked and is_valid(prev) then rev = fmt(emit('deregistered', reason, id, prev, nil, foreign)) end
return {0, rev}
