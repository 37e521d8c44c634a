local FIELDS = {'address', 'services', 'timestamp', 'registeredAt', 'status', 'metadata', 'ttl'}
local function read_fields(k)
  local v = redis.call('HMGET', k, unpack(FIELDS))
  if not v[1] and not v[2] and not v[3] then return nil end
  return {address = v[1], services = v[2], timestamp = v[3], registeredAt = v[4] or nil,
          status = v[5] or nil, metadata = v[6] or nil, ttl = v[7] or nil}
end
local function valid_json(s)
  if not s or s == '' then return false end
  local ok = pcall(cjson.decode, s)
  return ok
end
-- The validity rule of a node hash, Titan's reader's own (and `codec::check_hash`'s): a non-empty
-- address, services that parse as JSON (any JSON: Titan's reader keeps `null` or `{}` too; such a
-- node provides no service), a non-empty timestamp. (Liveness is the heartbeat key's, checked apart.)
-- A health check's verdict (Rust's `NodeInfo::keep_check_verdict`): the failure description when
-- the stored node `n` is held down by a check (DOWN, `check.output` in its metadata), else nil.
local function held_output(n)
  if n == nil or (n.status or 'UP') ~= 'DOWN' or not n.metadata then return nil end
  if not string.find(n.metadata, '"check.output"', 1, true) then return nil end
  local ok, m = pcall(cjson.decode, n.metadata)
  if ok and type(m) == 'table' and type(m['check.output']) == 'string' then return m['check.output'] end
  return nil
end
-- Keeps a check's verdict on `new` (a write of the node `old`, which the check holds down with
-- `output`), as long as the new metadata still asks for a check: DOWN, `check.output` and
-- `check.since` kept. The stored metadata text is kept when the content is the same, so an
-- unchanged write stays unchanged.
local function keep_verdict(old, new, output)
  local ok, m = pcall(cjson.decode, new.metadata)
  if not ok or type(m) ~= 'table' or m['check.type'] == nil then return end
  new.status = 'DOWN'
  m['check.output'] = output
  local okold, o = pcall(cjson.decode, old.metadata)
  local same = okold and type(o) == 'table'
  if same and type(o['check.since']) == 'string' then m['check.since'] = o['check.since'] else m['check.since'] = nil end
  if same then
    for k, v in pairs(m) do if o[k] ~= v then same = false end end
    for k, v in pairs(o) do if m[k] ~= v then same = false end end
  end
  if same then
    new.metadata = old.metadata
    return
  end
  local names = {}
  for k in pairs(m) do names[#names + 1] = k end
  table.sort(names)
  local parts = {}
  for _, k in ipairs(names) do parts[#parts + 1] = cjson.encode(k) .. ':' .. cjson.encode(m[k]) end
  new.metadata = '{' .. table.concat(parts, ',') .. '}'
end
local function is_valid(n)
  return n ~= nil and n.address and n.address ~= '' and valid_json(n.services) and n.timestamp and n.timestamp ~= ''
    and true or false
end
local function digits(v, default)
  if v and string.match(v, '^%d+$') then return v end
  return default
end
local function service_names(services)
  local names = {}
  local ok, list = pcall(cjson.decode, services or '')
  if ok and type(list) == 'table' then
    for _, s in ipairs(list) do
      if type(s) == 'table' and type(s.name) == 'string' then names[s.name] = true end
    end
  end
  return names
end
-- What an access decision was made on (Rust's `StoredServices::to_wire`): '-' for no live node,
-- else its service names sorted and joined by ','.
local function stored_names(n)
  if n == nil then return '-' end
  local names = {}
  for name in pairs(service_names(n.services)) do names[#names + 1] = name end
  table.sort(names)
  return table.concat(names, ',')
end
local function node_json(id, n)
  local metadata = n.metadata
  if not valid_json(metadata) then metadata = '{}' end
  return '{"nodeId":' .. cjson.encode(id) .. ',"address":' .. cjson.encode(n.address) ..
    ',"services":' .. n.services .. ',"timestamp":' .. digits(n.timestamp, '0') ..
    ',"registeredAt":' .. digits(n.registeredAt, digits(n.timestamp, '0')) ..
    ',"status":' .. cjson.encode(n.status or 'UP') .. ',"metadata":' .. metadata ..
    ',"ttlMs":' .. digits(n.ttl, '0') .. '}'
end
local TITAN = {registered = 'NODE_REGISTERED', updated = 'NODE_UPDATED', deregistered = 'NODE_DEREGISTERED'}
-- Carries the revision counter over to a primary this prefix has not met before (`id`: its
-- replication id, or in a Cluster its node id; remembered in K_EPOCH; once per primary). When it
-- was promoted from a replica (a failover: `promoted`), the revisions the old primary issued last
-- may not have reached it, and reissuing one for another change would show watchers two changes
-- under one revision. So the counter jumps past anything issued before (to the server's time in
-- ms x 1000, as a fresh counter starts), and every watcher, finding the next revision is not the
-- one after its last, resyncs. A primary that restarted on its own files keeps its counter (what
-- it lost with them, a fresh counter notices). Returns 1 when the counter jumped.
local function carry_over(id, promoted)
  if redis.call('GET', K_EPOCH) == id then return 0 end
  redis.call('SET', K_EPOCH, id)
  if not promoted then return 0 end
  local rev = tonumber(redis.call('GET', K_REV) or '0')
  if rev and rev > 0 and NOW * 1000 > rev then
    redis.call('SET', K_REV, fmt(NOW * 1000))
    return 1
  end
  return 0
end
-- In a Cluster (`CHECK_PRIMARY`) the client follows a failover inside, with no new connection on
-- which to check the primary first; so a script that issues a revision checks, once, which node
-- it runs on (`CLUSTER MYID`: about a microsecond, where `INFO replication` costs eight or nine).
-- Another node than the last one means the slot changed hands — a replica promoted, or the slot
-- migrated with its keys — and either way the counter jumps (a migration costs watchers one
-- needless resync). A master restarted keeps its node id (and a fresh counter covers the data it
-- lost). A Redis user that may not run the command skips the check.
local primary_checked = not CHECK_PRIMARY
local function check_primary()
  if primary_checked then return end
  primary_checked = true
  local id = redis.pcall('CLUSTER', 'MYID')
  if type(id) == 'string' then carry_over('node:' .. id, true) end
end
local function next_revision()
  check_primary()
  local rev = redis.call('INCR', K_REV)
  local first = '0'
  if rev == 1 then
    first = '1'
    -- A fresh counter (first use, or the data was lost) starts above anything an earlier counter
    -- could have issued, so revisions keep increasing and watchers notice the gap.
    rev = NOW * 1000
    local last = redis.call('XREVRANGE', K_LOG, '+', '-', 'COUNT', 1)
    if last[1] then
      local ms = tonumber(string.match(last[1][1], '^(%d+)'))
      if ms and ms >= rev then rev = ms + 1 end
    end
    redis.call('SET', K_REV, fmt(rev))
  end
  return rev, first
end
-- Appends an event to the log (`first` = '1' marks the first revision of a fresh counter) and
-- publishes it on the Titan channel, unless `quiet`: events about a Titan peer's node (found by
-- reconciliation, or its expiry) are the peer's to announce, never Muster's.
-- `prev`: for an update that changed the node's services, what it provided before (services JSON).
local function emit(kind, reason, id, n, prev, quiet)
  local rev, first = next_revision()
  local fields = {'type', kind, 'reason', reason, 'node', node_json(id, n), 'ts', fmt(NOW), 'first', first}
  if prev and prev ~= n.services then
    fields[#fields + 1] = 'prev'
    fields[#fields + 1] = prev
  end
  redis.call('XADD', K_LOG, 'MAXLEN', MAXLEN, fmt(rev) .. '-0', unpack(fields))
  if not quiet then publish(TITAN[kind], id, n.address, n.services, ',"revision":' .. fmt(rev)) end
  return rev
end
-- The first service in `services` (JSON) that `id` does not provide yet and that already has
-- `limit` other nodes, with that count; nil when the write may add the node everywhere.
local function over_limit(id, services, limit)
  if limit == nil or limit == '' then return nil end
  local max = tonumber(limit)
  for name in pairs(service_names(services)) do
    local set = key('index:services', name)
    if redis.call('SISMEMBER', set, id) == 0 then
      local others = redis.call('SCARD', set)
      if others >= max then return name, others end
    end
  end
  return nil
end
-- What a Titan peer's node looked like when last seen (foreign nodes only): fields `a:<id>` (its
-- address) and `s:<id>` (its services), so one HMGET answers for many nodes.
local function remember(id, n)
  redis.call('HSET', K_SEEN, 'a:' .. id, n.address, 's:' .. id, n.services)
end
-- Keeps the node as of its last change: field by field (for expiry events after the hash expired)
-- and as JSON in the info hash (read by listings in one command).
local function copy_last(id, n)
  redis.call('HSET', key('last', id), 'address', n.address, 'services', n.services,
    'timestamp', n.timestamp, 'registeredAt', n.registeredAt or n.timestamp,
    'status', n.status or 'UP', 'metadata', n.metadata or '{}', 'ttl', n.ttl or '0')
  redis.call('HSET', K_INFO, id, node_json(id, n))
end
-- Why a tracked node is gone before anyone expired it: removed before its deadline by someone
-- else (a Titan peer's shutdown or `deregisterNode`: 'graceful'; its hash broken: 'evicted'), or
-- its heartbeat ran out ('expired').
local function vanish_reason(id, hash_present)
  local deadline = redis.call('ZSCORE', K_DEADLINES, id)
  if deadline and tonumber(deadline) > NOW then
    if hash_present then return 'evicted' end
    return 'graceful'
  end
  return 'expired'
end
-- Milliseconds a heartbeat key has left, or nil when it is gone. A key without a TTL is alive (a
-- reader only tests that it exists); it is looked at again in 15 s.
local function heartbeat_left(id)
  local pttl = redis.call('PTTL', key('heartbeat', id))
  if pttl == -2 then return nil end
  if pttl < 0 then return 15000 end
  return math.max(pttl, 1)
end
-- Removes a node from every structure. Returns true when the sweeper was tracking it.
local function remove(id, n)
  redis.call('DEL', key('nodes', id), key('heartbeat', id), key('last', id))
  redis.call('SREM', K_INDEX, id)
  redis.call('SREM', K_FOREIGN, id)
  redis.call('SREM', K_TRACKED, id)
  redis.call('HDEL', K_INFO, id)
  redis.call('HDEL', K_SEEN, 'a:' .. id, 's:' .. id)
  local tracked = redis.call('ZREM', K_DEADLINES, id) == 1
  if n and n.services then
    for name in pairs(service_names(n.services)) do redis.call('SREM', key('index:services', name), id) end
  end
  return tracked
end
-- The node as last known: the live hash, or the copy kept since the last change.
local function last_known(id)
  local n = read_fields(key('nodes', id))
  if is_valid(n) then return n end
  local last = read_fields(key('last', id))
  if is_valid(last) then return last end
  return n
end
