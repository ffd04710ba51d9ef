-- Prologue of the budget scripts (joined in front of them in Python): the Redis clock in µs
-- (now), and, for every scope of the call, the drop of the reservations past their expiry (a
-- worker that died mid-call never settled them), their amounts taken off the scope's held sum.
-- KEYS: three per scope, in order: acct (HASH spent, held, seeded), res (HASH reservation id →
-- amount), exp (ZSET reservation id → expiry, µs). Amounts are integers (1e-8 USD).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local scopes = #KEYS / 3
for i = 1, scopes do
  local acct, res, exp = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  if #gone > 0 then
    local freed = 0
    for j = 1, #gone, 500 do
      local chunk = {}
      for k = j, math.min(j + 499, #gone) do chunk[#chunk + 1] = gone[k] end
      local values = redis.call('HMGET', res, unpack(chunk))
      for k = 1, #values do
        if values[k] then freed = freed + tonumber(values[k]) end
      end
      redis.call('HDEL', res, unpack(chunk))
    end
    redis.call('ZREMRANGEBYSCORE', exp, '-inf', now)
    if freed > 0 and redis.call('EXISTS', acct) == 1 then redis.call('HINCRBY', acct, 'held', -freed) end
  end
  -- self-healing: no reservation left holds nothing
  if redis.call('ZCARD', exp) == 0 and tonumber(redis.call('HGET', acct, 'held') or '0') ~= 0 then
    redis.call('HSET', acct, 'held', 0)
  end
end
