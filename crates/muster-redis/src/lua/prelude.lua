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
