-- r-nacos registrations of fresh ephemeral instances (a new ip:port per request) over 50 services.
local thread_id = 0
setup = function(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end
local counter = 0
request = function()
  counter = counter + 1
  local ip = "10." .. (100 + id) .. "." .. (math.floor(counter / 60000) % 256) .. "." .. (math.floor(counter / 250) % 240 + 1)
  local port = 1024 + counter % 250
  return wrk.format("POST", "/nacos/v1/ns/instance?serviceName=reg-" .. (counter % 50) .. "&ip=" .. ip .. "&port=" .. port .. "&ephemeral=true")
end
