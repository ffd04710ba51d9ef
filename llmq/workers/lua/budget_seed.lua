-- After budget_prologue. Seed the scopes not seeded yet with what the database says was spent
-- in the period, on top of anything settled meanwhile; a scope already seeded (by another worker,
-- a moment ago) is left as it is, so two workers seeding at once agree.
-- ARGV: 1 acct_ttl_ms, 1 + i: the database's spend of scope i. → the scopes seeded here.

local seeded = 0
for i = 1, scopes do
  local acct = KEYS[3 * i - 2]
  if redis.call('HGET', acct, 'seeded') ~= '1' then
    redis.call('HINCRBY', acct, 'spent', tonumber(ARGV[1 + i]))
    redis.call('HSET', acct, 'seeded', 1)
    redis.call('PEXPIRE', acct, ARGV[1])
    seeded = seeded + 1
  end
end
return seeded
