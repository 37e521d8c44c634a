redis.call('HMSET', KEYS[1],
  'address', ARGV[2],
  'services', ARGV[3],
  'timestamp', ARGV[4]
)

redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PSETEX', KEYS[2], ARGV[6], '1')
redis.call('SADD', KEYS[3], ARGV[1])

return 1
