local P = ARGV[1]
local CHANNEL = ARGV[2]
local MAXLEN = ARGV[3]
local function key(kind, id) return P .. ':' .. kind .. ':' .. id end
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local function fmt(n) return string.format('%.0f', n) end
-- Publishes a Titan channel message (when pub/sub is on). `extra` is appended inside the object;
-- `"muster":true` tells Muster watchers the change reaches them through the log instead.
-- A refused PUBLISH (a Redis user without the command) never undoes or fails the write: it is
-- reported beside the reply (see `finish`), as Titan logs it and registers anyway.
local PUBLISH_ERROR = nil
local function publish(kind, id, address, services, extra)
  if CHANNEL ~= '' then
    local answer = redis.pcall('PUBLISH', CHANNEL, '{"type":"' .. kind .. '","nodeId":' .. cjson.encode(id) ..
      ',"address":' .. cjson.encode(address) .. ',"services":' .. services ..
      ',"timestamp":' .. fmt(NOW) .. extra .. ',"muster":true}')
    if type(answer) == 'table' and answer.err then PUBLISH_ERROR = answer.err end
  end
end
-- The script's reply, wrapped as {'~publish-failed', error, reply} when a publish was refused.
local function finish(reply)
  if PUBLISH_ERROR then return {'~publish-failed', PUBLISH_ERROR, reply} end
  return reply
end
