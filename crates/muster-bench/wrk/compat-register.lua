-- seed-003 registrations of fresh instances into one service
local counter = 0
local thread_id = 0
setup = function(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end
request = function()
  counter = counter + 1
  local port = 1 + (counter % 60000)
  local body = '{"name":"big","ip":"10.' .. id .. '.' .. math.floor(counter / 60000) % 250 .. '.1","port":' .. port .. '}'
  return wrk.format("POST", "/register", {["content-type"] = "application/json"}, body)
end
