-- A primary this prefix may not have met before, checked on a new connection before anything else
-- uses it (see `carry_over`). `ARGV[4]`: its replication id; `ARGV[5]` = '1' when it was promoted
-- from a replica. Returns 1 when the counter jumped.
return carry_over(ARGV[4], ARGV[5] == '1')
