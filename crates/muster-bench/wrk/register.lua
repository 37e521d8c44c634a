-- Registrations of fresh nodes: every request registers a new id (with the -H headers, e.g. a token).
local thread_id = 0
setup = function(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end
local counter = 0
local headers = {["content-type"] = "application/json"}
init = function()
  for name, value in pairs(wrk.headers) do headers[name] = value end
end
request = function()
  counter = counter + 1
  local body = '{"address":"10.1.0.1:8080","services":[{"name":"reg-' .. (counter % 50) .. '","version":"1.0.0"}],"ttlMs":600000}'
  return wrk.format("PUT", "/v1/nodes/reg-" .. id .. "-" .. counter, headers, body)
end
