-- A primary this prefix has not met before. When it was promoted from a replica (a failover:
-- `ARGV[5]` = '1'), the revisions the old primary issued last may not have reached it, and
-- reissuing one for another change would show watchers two changes under one revision. So the
-- counter jumps past anything issued before (to the server's time in ms × 1000, as a fresh counter
-- starts), and every watcher, finding the next revision is not the one after its last, resyncs. A
-- primary that restarted on its own files keeps its counter (what it lost with them, a fresh
-- counter notices). Once per primary: `ARGV[4]` is its replication id, remembered in K_EPOCH.
-- Returns 1 when the counter jumped.
if redis.call('GET', K_EPOCH) == ARGV[4] then return 0 end
redis.call('SET', K_EPOCH, ARGV[4])
if ARGV[5] ~= '1' then return 0 end
local rev = tonumber(redis.call('GET', K_REV) or '0')
if rev and rev > 0 and NOW * 1000 > rev then
  redis.call('SET', K_REV, fmt(NOW * 1000))
  return 1
end
return 0
