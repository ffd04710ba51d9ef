-- After budget_prologue. End a reservation in every scope: give back what it held and add the
-- call's real cost to what was spent (cost -1: cancel, nothing was spent).
-- ARGV: 1 reservation id, 2 cost, 3 acct_ttl_ms.
-- → {spent before, spent after} of each scope in order ({} for a cancel).
-- A reservation that already expired is settled all the same (its cost is added once). An account
-- that is missing (Redis lost it, or the period is new) is created unseeded: the next reservation
-- seeds it from the database on top of what was added here (an over-count, the safe side).

local cost = tonumber(ARGV[2])
local out = {}
for i = 1, scopes do
  local acct, res, exp = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local amount = redis.call('HGET', res, ARGV[1])
  if amount then
    redis.call('HDEL', res, ARGV[1])
    redis.call('ZREM', exp, ARGV[1])
    if redis.call('EXISTS', acct) == 1 then
      local held = redis.call('HINCRBY', acct, 'held', -tonumber(amount))
      if held < 0 then redis.call('HSET', acct, 'held', 0) end
    end
  end
  if cost >= 0 then
    local before = tonumber(redis.call('HGET', acct, 'spent') or '0')
    local after = redis.call('HINCRBY', acct, 'spent', cost)
    redis.call('PEXPIRE', acct, ARGV[3])
    out[#out + 1] = before
    out[#out + 1] = after
  end
end
return out
