-- r-nacos heartbeats of the 100 seeded instances (10.0.0.<i+1>:8080 in svc-<i % 10>), round robin.
local counter = 0
request = function()
  counter = counter + 1
  local i = counter % 100
  local service = "svc-" .. (i % 10)
  local ip = "10.0." .. math.floor(i / 250) .. "." .. (i % 250 + 1)
  local beat = '{"serviceName":"' .. service .. '","ip":"' .. ip .. '","port":8080,"weight":1,"metadata":{}}'
  beat = beat:gsub("[^%w]", function(c) return string.format("%%%02X", string.byte(c)) end)
  return wrk.format("PUT", "/nacos/v1/ns/instance/beat?serviceName=" .. service .. "&ip=" .. ip .. "&port=8080&beat=" .. beat)
end
