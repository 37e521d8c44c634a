//! The Lua scripts. Each runs atomically on the server, so concurrent writers cannot interleave
//! inside one change, and whether something changed is decided where the data is.
//!
//! Every script receives `KEYS[1]` = the Titan node index (for cluster routing; every key shares
//! its hash slot) and `ARGV[1..3]` = key prefix, pub/sub channel (`''` when off), log `MAXLEN`.
//! Time is the server's (`TIME`), so deadlines do not depend on client clocks.

use redis::Script;

/// Shared definitions, prepended to every script.
const PRELUDE: &str = r#"
local P = ARGV[1]
local CHANNEL = ARGV[2]
local MAXLEN = ARGV[3]
local function key(kind, id) return P .. ':' .. kind .. ':' .. id end
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local function fmt(n) return string.format('%.0f', n) end
-- Publishes a Titan channel message (when pub/sub is on). `extra` is appended inside the object;
-- `"muster":true` tells Muster watchers the change reaches them through the log instead.
local function publish(kind, id, address, services, extra)
  if CHANNEL ~= '' then
    redis.call('PUBLISH', CHANNEL, '{"type":"' .. kind .. '","nodeId":' .. cjson.encode(id) ..
      ',"address":' .. cjson.encode(address) .. ',"services":' .. services ..
      ',"timestamp":' .. fmt(NOW) .. extra .. ',"muster":true}')
  end
end
"#;

/// Everything else the scripts share. Kept apart from [`PRELUDE`] so the heartbeat's steady-state
/// path returns before any of it is evaluated.
const COMMON: &str = r#"
local K_INDEX = P .. ':index:nodes'
local K_DEADLINES = P .. ':index:deadlines'
local K_FOREIGN = P .. ':index:foreign'
local K_TRACKED = P .. ':index:tracked'
local K_INFO = P .. ':info'
local K_REV = P .. ':revision'
local K_LOG = P .. ':log'
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
-- address, services that parse as a JSON list, a non-empty timestamp. (Liveness is the heartbeat
-- key's, checked apart.)
local function is_list(s)
  return s and string.match(s, '^[ \t\r\n]*%[') ~= nil and valid_json(s)
end
local function is_valid(n)
  return n ~= nil and n.address and n.address ~= '' and is_list(n.services) and n.timestamp and n.timestamp ~= ''
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
local function next_revision()
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
-- publishes it on the Titan channel.
local function emit(kind, reason, id, n)
  local rev, first = next_revision()
  redis.call('XADD', K_LOG, 'MAXLEN', MAXLEN, fmt(rev) .. '-0',
    'type', kind, 'reason', reason, 'node', node_json(id, n), 'ts', fmt(NOW), 'first', first)
  publish(TITAN[kind], id, n.address, n.services, ',"revision":' .. fmt(rev))
  return rev
end
-- What a Titan peer's node looked like when last seen (foreign nodes only): fields `a:<id>` (its
-- address) and `s:<id>` (its services), so one HMGET answers for many nodes.
local K_SEEN = P .. ':index:seen'
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
"#;

/// Register-or-heartbeat, steady-state part: when the stored node equals the registration and its
/// heartbeat key is still there, refresh and return before [`COMMON`] is evaluated. `ARGV[4..]`: id,
/// address, services JSON, client timestamp ms (unused: timestamps are the server's, so they agree
/// with deadlines), TTL s, TTL ms, status, metadata JSON, and `'1'` to publish Titan's
/// `NODE_UPDATED` for every heartbeat (as a Titan node does when pub/sub is on).
const HEARTBEAT_FAST: &str = r#"
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
    redis.call('ZADD', P .. ':index:deadlines', NOW + tonumber(ARGV[9]), id)
    if ARGV[12] == '1' then publish('NODE_UPDATED', id, ARGV[5], ARGV[6], '') end
    return {'unchanged', v[6] or v[5], '0', '0', fmt(NOW)}
  end
end
"#;

/// Register-or-heartbeat, the rest: registrations, changes, and nodes whose heartbeat had run out.
/// Returns `{change, registeredAt, revision, expiredRevision, timestamp}`.
const HEARTBEAT: &str = r#"
local new = {address = ARGV[5], services = ARGV[6], timestamp = fmt(NOW), status = ARGV[10],
             metadata = ARGV[11], ttl = ARGV[9]}
local ttl_ms = tonumber(ARGV[9])
local old = read_fields(node_key)
if hb_alive == nil then hb_alive = redis.call('EXISTS', hb) == 1 end
local alive = hb_alive and old ~= nil and old.address and old.address ~= ''
  and old.timestamp and old.timestamp ~= '' and (old.services == new.services or valid_json(old.services))
local change = 'registered'
local expired_rev = '0'
if alive then
  new.registeredAt = old.registeredAt or old.timestamp
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
    if remove(id, prev) and is_valid(prev) then expired_rev = fmt(emit('deregistered', reason, id, prev)) end
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
  rev = fmt(emit(change, '', id, new))
elseif ARGV[12] == '1' then
  publish('NODE_UPDATED', id, new.address, new.services, '')
end
return {change, new.registeredAt, rev, expired_rev, new.timestamp}
"#;

/// Heartbeat of an active node with its stored values, optionally a new status. `ARGV[4..]`: id,
/// status (`''` to keep), `'1'` to publish Titan's `NODE_UPDATED` for an unchanged heartbeat. Returns `{'notfound'}` or `{change, revision, <7 node fields>}`.
const REFRESH: &str = r#"
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
if ARGV[5] ~= '' and ARGV[5] ~= (n.status or 'UP') then
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
"#;

/// Partial update of an active node, without extending its life. `ARGV[4..]`: id, address,
/// services JSON, status, metadata JSON (each `''` to keep). The timestamp is the server's.
/// Returns `{'notfound'}` or `{change, revision, <node fields...>}`.
const UPDATE: &str = r#"
local id = ARGV[4]
local old = read_fields(key('nodes', id))
if redis.call('EXISTS', key('heartbeat', id)) == 0 or not is_valid(old) then return {'notfound'} end
local new = {address = old.address, services = old.services, timestamp = old.timestamp,
             registeredAt = old.registeredAt or old.timestamp, status = old.status or 'UP',
             metadata = old.metadata or '{}', ttl = old.ttl or '0'}
if ARGV[5] ~= '' then new.address = ARGV[5] end
if ARGV[6] ~= '' then new.services = ARGV[6] end
if ARGV[7] ~= '' then new.status = ARGV[7] end
if ARGV[8] ~= '' then new.metadata = ARGV[8] end
local changed = new.address ~= old.address or new.services ~= old.services
  or new.status ~= (old.status or 'UP') or new.metadata ~= (old.metadata or '{}')
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
  rev = fmt(emit('updated', '', id, new))
end
return {changed and 'updated' or 'unchanged', rev, new.address, new.services, new.timestamp,
        new.registeredAt, new.status, new.metadata, new.ttl}
"#;

/// Deregistration. `ARGV[4..]`: id, reason. Returns `{removed (0/1), revision}`; a node whose TTL
/// had already run out is expired instead (with its event) and counts as not removed.
const DEREGISTER: &str = r#"
local id = ARGV[4]
local present = redis.call('EXISTS', key('nodes', id)) == 1 or redis.call('SISMEMBER', K_INDEX, id) == 1
  or redis.call('ZSCORE', K_DEADLINES, id)
if not present then return {0, '0'} end
local alive = redis.call('EXISTS', key('heartbeat', id)) == 1
local prev = last_known(id)
local reason = vanish_reason(id, redis.call('EXISTS', key('nodes', id)) == 1)
local tracked = remove(id, prev)
local rev = '0'
if alive then
  if is_valid(prev) then rev = fmt(emit('deregistered', ARGV[5], id, prev)) end
  return {1, rev}
end
if tracked and is_valid(prev) then rev = fmt(emit('deregistered', reason, id, prev)) end
return {0, rev}
"#;

/// Expiry of nodes whose deadline passed, at most `ARGV[4]` of them. Re-checks each heartbeat: a
/// node that heartbeated in time (a Titan peer's heartbeats do not move deadlines) gets its deadline
/// moved instead. A node whose heartbeat is alive but whose hash broke is evicted, as Titan's reader
/// would remove it. Returns `{removed, nextDeadline or -1, now}`.
const SWEEP: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
local removed = 0
for _, id in ipairs(ids) do
  local left = heartbeat_left(id)
  local n = read_fields(key('nodes', id))
  if left and is_valid(n) then
    redis.call('ZADD', K_DEADLINES, NOW + left, id)
  else
    local prev = last_known(id)
    local reason = 'expired'
    if left then reason = 'evicted' end
    if remove(id, prev) and is_valid(prev) then emit('deregistered', reason, id, prev) end
    removed = removed + 1
  end
end
local first = redis.call('ZRANGE', K_DEADLINES, 0, 0, 'WITHSCORES')
local next_deadline = '-1'
if first[2] then next_deadline = first[2] end
return {removed, next_deadline, fmt(NOW)}
"#;

/// Reconciliation with what Titan peers wrote, so that every change they make becomes exactly one
/// event whatever their pub/sub setting. `ARGV[4]` = `ids`, the nodes in `ARGV[5..]` (a full
/// pass's candidates, found with native commands by `Inner::reconcile`, or hinted ones). For each
/// node:
///
/// - in the Titan index but not tracked: adopted when live and valid (deadline from its heartbeat's
///   remaining TTL, announced as registered); removed, as Titan's reader removes it, when its
///   heartbeat is gone or its hash breaks the validity rule;
/// - tracked but gone from the index (Titan's shutdown, `deregisterNode`, or its reader's cleanup):
///   removed, announced as deregistered — 'graceful' before its deadline, 'expired' after;
/// - written by a Titan peer and tracked: compared with what was last seen (address and services);
///   a difference is announced as updated with the new values; a live node whose hash broke is
///   evicted.
///
/// Returns `{adopted, updated, removed}`.
const RECONCILE: &str = r#"
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
    emit('registered', '', id, n)
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
  if remove(id, prev) and is_valid(prev) then emit('deregistered', reason, id, prev) end
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
      if remove(id, prev) and is_valid(prev) then emit('deregistered', 'evicted', id, prev) end
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
  emit('updated', '', id, n)
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
"#;

/// Reads nodes; never writes anything but the listing cache below, and that only with `ARGV[5]` =
/// `rw` (`ro`: a read-only inspection, or a replica). `ARGV[4]` = `active` (every live node),
/// `service` (live nodes listing the service `ARGV[6]`), `all` (every indexed node, live or not)
/// or `ids` (`ARGV[6..]`).
///
/// Live nodes written by Muster or adopted come from the info hash in bulk: one JSON array plus
/// their deadlines. Nodes in the Titan index that no sweeper tracks yet (written by Titan peers, not
/// adopted) are read from their hashes, so every reader sees them at once; tracked nodes that left
/// the index (removed by a Titan peer) are left out at once. For `active`, the bulk pair is kept as
/// a materialized view (`P:view`, with a TTL), valid while the revision is unchanged, the index
/// agrees with the tracked set, and until the earliest deadline in it, so a steady-state listing is
/// one `GET` rather than a read per node (its timestamps then lag the last heartbeat by at most the
/// time until that deadline). Adopted Titan nodes are always read from their hashes: their
/// heartbeats do not go through Muster. Returns `{revision, jsonArray, deadlinesCsv, id, alive,
/// <7 fields>, id, ...}` with `''` for missing fields.
const READ: &str = r#"
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
local K_VIEW = P .. ':view'
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
"#;

/// Takes or renews the sweeper lease. `ARGV[4..]`: token, lease ms. Returns 1 when held.
const LEASE: &str = r#"
local k = P .. ':sweeper'
local current = redis.call('GET', k)
if current == ARGV[4] then redis.call('PEXPIRE', k, ARGV[5]) return 1 end
if not current then redis.call('SET', k, ARGV[4], 'PX', ARGV[5]) return 1 end
return 0
"#;

/// Releases the sweeper lease if held. `ARGV[4]`: token.
const RELEASE: &str = r#"
local k = P .. ':sweeper'
if redis.call('GET', k) == ARGV[4] then redis.call('DEL', k) return 1 end
return 0
"#;

/// The compiled scripts (each knows its SHA1; invocation uses EVALSHA and reloads on NOSCRIPT).
pub(crate) struct Scripts {
    pub(crate) heartbeat: Script,
    pub(crate) update: Script,
    pub(crate) refresh: Script,
    pub(crate) deregister: Script,
    pub(crate) sweep: Script,
    pub(crate) reconcile: Script,
    pub(crate) read: Script,
    pub(crate) lease: Script,
    pub(crate) release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{PRELUDE}\n{COMMON}\n{body}"));
        Self {
            heartbeat: Script::new(&format!("{PRELUDE}\n{HEARTBEAT_FAST}\n{COMMON}\n{HEARTBEAT}")),
            update: with_common(UPDATE),
            refresh: with_common(REFRESH),
            deregister: with_common(DEREGISTER),
            sweep: with_common(SWEEP),
            reconcile: with_common(RECONCILE),
            read: with_common(READ),
            lease: with_common(LEASE),
            release: with_common(RELEASE),
        }
    }
}

/// The heartbeat script of the Titan discovery module, verbatim (seed 001), for compatibility tests
/// and the benchmark ceiling.
pub const TITAN_HEARTBEAT_SCRIPT: &str = r#"
redis.call('HMSET', KEYS[1],
  'address', ARGV[2],
  'services', ARGV[3],
  'timestamp', ARGV[4]
)

redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PSETEX', KEYS[2], ARGV[6], '1')
redis.call('SADD', KEYS[3], ARGV[1])

return 1
"#;
