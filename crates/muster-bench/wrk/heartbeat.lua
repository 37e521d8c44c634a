-- Heartbeats of nodes bench-0 .. bench-99, round robin per connection.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/nodes/bench-" .. (counter % 100) .. "/heartbeat", {["content-type"] = "application/json"}, '{"status":"UP"}')
end
