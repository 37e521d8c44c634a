-- Heartbeats of nodes bench-0 .. bench-99, round robin per connection (with the -H headers, e.g. a token).
local counter = 0
local headers = {["content-type"] = "application/json"}
init = function()
  for name, value in pairs(wrk.headers) do headers[name] = value end
end
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/nodes/bench-" .. (counter % 100) .. "/heartbeat", headers, '{"status":"UP"}')
end
