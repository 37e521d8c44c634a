//! The Lua scripts. Each runs atomically on the server, so concurrent writers cannot interleave
//! inside one change, and whether something changed is decided where the data is.
//!
//! Every script receives `KEYS[1]` = the Titan node index (for cluster routing; every key shares
//! its hash slot) and `ARGV[1..3]` = key prefix, pub/sub channel (`''` when off), log `MAXLEN`.
//! Time is the server's (`TIME`), so deadlines do not depend on client clocks.

use redis::Script;

/// Shared definitions, prepended to every script.
const COMMON: &str = r#"
local P = ARGV[1]
local CHANNEL = ARGV[2]
local MAXLEN = ARGV[3]
local function key(kind, id) return P .. ':' .. kind .. ':' .. id end
local K_INDEX = P .. ':index:nodes'
local K_DEADLINES = P .. ':index:deadlines'
local K_FOREIGN = P .. ':index:foreign'
local K_REV = P .. ':revision'
local K_LOG = P .. ':log'
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local function fmt(n) return string.format('%.0f', n) end
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
local function copy_last(id, n)
  redis.call('HSET', key('last', id), 'address', n.address, 'services', n.services,
    'timestamp', n.timestamp, 'registeredAt', n.registeredAt or n.timestamp,
    'status', n.status or 'UP', 'metadata', n.metadata or '{}', 'ttl', n.ttl or '0')
end
-- Removes a node from every structure. Returns true when the sweeper was tracking it.
local function remove(id, n)
  redis.call('DEL', key('nodes', id), key('heartbeat', id), key('last', id))
  redis.call('SREM', K_INDEX, id)
  redis.call('SREM', K_FOREIGN, id)
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

/// Register-or-heartbeat. `ARGV[4..]`: id, address, services JSON, timestamp ms, TTL s, TTL ms,
/// status, metadata JSON. Returns `{change, registeredAt, revision, expiredRevision}`.
const HEARTBEAT: &str = r#"
local id = ARGV[4]
local new = {address = ARGV[5], services = ARGV[6], timestamp = ARGV[7], status = ARGV[10],
             metadata = ARGV[11], ttl = ARGV[9]}
local ttl_ms = tonumber(ARGV[9])
local hb = key('heartbeat', id)
local old = read_fields(key('nodes', id))
-- Alive: heartbeat present and a complete hash (services equal to ours need no JSON check).
local alive = redis.call('EXISTS', hb) == 1 and old ~= nil and old.address and old.address ~= ''
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
if change == 'unchanged' then
  -- The steady state: only the timestamp (and a changed TTL) are written.
  redis.call('HSET', key('nodes', id), 'timestamp', new.timestamp, 'ttl', new.ttl)
else
  redis.call('HSET', key('nodes', id), 'address', new.address, 'services', new.services,
    'timestamp', new.timestamp, 'registeredAt', new.registeredAt, 'status', new.status,
    'metadata', new.metadata, 'ttl', new.ttl)
end
redis.call('EXPIRE', key('nodes', id), ARGV[8])
redis.call('SET', hb, '1', 'PX', ARGV[9])
redis.call('SADD', K_INDEX, id)
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
return {change, new.registeredAt, rev, expired_rev}
"#;

/// Partial update of an active node, without extending its life. `ARGV[4..]`: id, address,
/// services JSON, status, metadata JSON (each `''` to keep), timestamp ms.
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
  new.timestamp = ARGV[9]
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
      copy_last(id, n)
      emit('registered', '', id, n)
      adopted = adopted + 1
    end
  end
end
return adopted
"#;

/// Reads nodes. `ARGV[4]` = `all` (the whole index), `service` (the service index of `ARGV[5]` plus
/// the foreign set) or `ids` (`ARGV[5..]`). Returns `{revision, id, alive, <7 fields>, id, ...}`
/// with `''` for missing fields.
const READ: &str = r#"
local mode = ARGV[4]
local ids
if mode == 'all' then
  ids = redis.call('SMEMBERS', K_INDEX)
elseif mode == 'service' then
  ids = redis.call('SUNION', key('index:services', ARGV[5]), K_FOREIGN)
else
  ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local out = {redis.call('GET', K_REV) or '0'}
for _, id in ipairs(ids) do
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
    pub(crate) deregister: Script,
    pub(crate) sweep: Script,
    pub(crate) adopt: Script,
    pub(crate) read: Script,
    pub(crate) lease: Script,
    pub(crate) release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Self {
            heartbeat: with_common(HEARTBEAT),
            update: with_common(UPDATE),
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
