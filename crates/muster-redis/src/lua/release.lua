local k = K_SWEEPER
if redis.call('GET', k) == ARGV[4] then redis.call('DEL', k) return 1 end
return 0
