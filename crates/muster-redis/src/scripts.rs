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
local function is_valid(n)
  return n ~= nil and n.address and n.address ~= '' and valid_json(n.services) and n.timestamp and n.timestamp ~= ''
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
  if CHANNEL ~= '' then
    redis.call('PUBLISH', CHANNEL, '{"type":"' .. TITAN[kind] .. '","nodeId":' .. cjson.encode(id) ..
      ',"address":' .. cjson.encode(n.address) .. ',"services":' .. n.services ..
      ',"timestamp":' .. fmt(NOW) .. ',"revision":' .. fmt(rev) .. ',"muster":true}')
  end
  return rev
end
-- Keeps the node as of its last change: field by field (for expiry events after the hash expired)
-- and as JSON in the info hash (read by listings in one command).
local function copy_last(id, n)
  redis.call('HSET', key('last', id), 'address', n.address, 'services', n.services,
    'timestamp', n.timestamp, 'registeredAt', n.registeredAt or n.timestamp,
    'status', n.status or 'UP', 'metadata', n.metadata or '{}', 'ttl', n.ttl or '0')
  redis.call('HSET', K_INFO, id, node_json(id, n))
end
-- Removes a node from every structure. Returns true when the sweeper was tracking it.
local function remove(id, n)
  redis.call('DEL', key('nodes', id), key('heartbeat', id), key('last', id))
  redis.call('SREM', K_INDEX, id)
  redis.call('SREM', K_FOREIGN, id)
  redis.call('SREM', K_TRACKED, id)
  redis.call('HDEL', K_INFO, id)
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
/// with deadlines), TTL s, TTL ms, status, metadata JSON.
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
  -- Leftovers of an expired or broken node: expire it first (with an event if it was tracked).
  if old or redis.call('ZSCORE', K_DEADLINES, id) then
    local prev = last_known(id)
    if remove(id, prev) and is_valid(prev) then expired_rev = fmt(emit('deregistered', 'expired', id, prev)) end
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
end
return {change, new.registeredAt, rev, expired_rev, new.timestamp}
"#;

/// Heartbeat of an active node with its stored values, optionally a new status. `ARGV[4..]`: id,
/// status (`''` to keep). Returns `{'notfound'}` or `{change, revision, <7 node fields>}`.
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
local tracked = remove(id, prev)
local rev = '0'
if alive then
  if is_valid(prev) then rev = fmt(emit('deregistered', ARGV[5], id, prev)) end
  return {1, rev}
end
if tracked and is_valid(prev) then rev = fmt(emit('deregistered', 'expired', id, prev)) end
return {0, rev}
"#;

/// Expiry. `ARGV[4]` = `due` (nodes whose deadline passed, at most `ARGV[5]`) or `reap` (the ids
/// in `ARGV[6..]`, found without heartbeat by a reader) or `evict` (ids found unreadable).
/// Re-checks each heartbeat: a node that heartbeated in time gets its deadline moved instead.
/// Returns `{removed, nextDeadline or -1, now}`.
const SWEEP: &str = r#"
local mode = ARGV[4]
local ids
if mode == 'due' then
  ids = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[5]))
else
  ids = {}
  for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local removed = 0
for _, id in ipairs(ids) do
  local pttl = redis.call('PTTL', key('heartbeat', id))
  local n = read_fields(key('nodes', id))
  if pttl > 0 and mode ~= 'evict' and is_valid(n) then
    -- Heartbeated in time (or a Titan node, whose heartbeats do not move deadlines): keep it.
    if redis.call('ZSCORE', K_DEADLINES, id) then redis.call('ZADD', K_DEADLINES, NOW + pttl, id) end
  else
    local prev = last_known(id)
    if remove(id, prev) and is_valid(prev) then emit('deregistered', 'expired', id, prev) end
    removed = removed + 1
  end
end
local first = redis.call('ZRANGE', K_DEADLINES, 0, 0, 'WITHSCORES')
local next_deadline = '-1'
if first[2] then next_deadline = first[2] end
return {removed, next_deadline, fmt(NOW)}
"#;

/// Adoption of nodes written by Titan peers (in the index, not tracked by the sweeper): they get
/// a deadline from their heartbeat's remaining TTL, join the foreign set that finds consult, and are
/// announced with a registration event. Returns the number adopted.
const ADOPT: &str = r#"
local adopted = 0
for _, id in ipairs(redis.call('SMEMBERS', K_INDEX)) do
  if not redis.call('ZSCORE', K_DEADLINES, id) then
    local pttl = redis.call('PTTL', key('heartbeat', id))
    local n = read_fields(key('nodes', id))
    if pttl > 0 and is_valid(n) then
      redis.call('ZADD', K_DEADLINES, NOW + pttl, id)
      redis.call('SADD', K_FOREIGN, id)
      redis.call('SADD', K_TRACKED, id)
      copy_last(id, n)
      emit('registered', '', id, n)
      adopted = adopted + 1
    end
  end
end
return adopted
"#;

/// Reads nodes. `ARGV[4]` = `active` (every live node), `service` (live nodes listing the service
/// `ARGV[5]`, plus adopted Titan nodes; Titan nodes not adopted yet are left out, which keeps the
/// cost independent of the node count), `all` (every indexed node, live or not) or `ids` (`ARGV[5..]`).
///
/// Live nodes written by Muster come from the info hash in bulk: one JSON array plus their
/// deadlines. For `active`, that pair is kept as a materialized view (`P:view`), valid while the
/// revision is unchanged and until the earliest deadline in it, so a steady-state listing is one
/// `GET` rather than a read per node (its timestamps then lag the last heartbeat by at most the
/// time until that deadline). Every other node (written by Titan peers, or read by `all`/`ids`) comes as a row read
/// from its Titan hash. Returns `{revision, jsonArray, deadlinesCsv, id, alive, <7 fields>, id, ...}`
/// with `''` for missing fields.
const READ: &str = r#"
local mode = ARGV[4]
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
  for _, id in ipairs(redis.call('SMEMBERS', K_FOREIGN)) do
    foreign[id] = true
    rows[#rows + 1] = id
  end
  if mode == 'active' then
    -- Nodes in the index but not tracked (written by Titan peers, not adopted yet).
    if redis.call('SCARD', K_INDEX) > redis.call('SCARD', K_TRACKED) then
      for _, id in ipairs(redis.call('SDIFF', K_INDEX, K_TRACKED)) do rows[#rows + 1] = id end
    end
    -- The materialized view: valid while the revision is unchanged and no node in it has reached
    -- its deadline (heartbeats move deadlines without changing the revision).
    local view = redis.call('GET', K_VIEW)
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
        if not foreign[z[i]] then bulk[#bulk + 1] = {z[i], z[i + 1]} end
      end
    end
  else
    local ids = redis.call('SMEMBERS', key('index:services', ARGV[5]))
    chunks(ids, 500, function(part)
      local scores = redis.call('ZMSCORE', K_DEADLINES, unpack(part))
      for j, id in ipairs(part) do
        if scores[j] and tonumber(scores[j]) > NOW and not foreign[id] then bulk[#bulk + 1] = {id, scores[j]} end
      end
    end)
  end
elseif mode == 'all' then
  rows = redis.call('SMEMBERS', K_INDEX)
else
  for i = 5, #ARGV do rows[#rows + 1] = ARGV[i] end
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
  if mode == 'active' then
    local until_ms = math.huge
    for _, d in ipairs(deadlines) do until_ms = math.min(until_ms, tonumber(d)) end
    if until_ms == math.huge then until_ms = NOW + 3600000 end
    redis.call('SET', K_VIEW, revision .. '|' .. fmt(until_ms) .. '|' .. #view_csv .. '|' .. view_csv .. view_body)
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
    pub(crate) adopt: Script,
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
            adopt: with_common(ADOPT),
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
