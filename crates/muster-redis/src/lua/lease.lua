local k = K_SWEEPER
local current = redis.call('GET', k)
if current == ARGV[4] then redis.call('PEXPIRE', k, ARGV[5]) return 1 end
if not current then redis.call('SET', k, ARGV[4], 'PX', ARGV[5]) return 1 end
return 0
