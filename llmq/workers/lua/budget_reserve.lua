-- After budget_prologue. Reserve one call's worst-case cost in every scope, all or nothing.
-- ARGV: 1 amount, 2 reservation id, 3 lifetime_us, 4 acct_ttl_ms, 4 + i: budget of scope i.
-- → {1, now_us} reserved (or already held under that id: its expiry renewed);
--   {0, i, spent, held} scope i has no room for it;
--   {-1, i, j, ...} scopes i, j, ... not seeded yet (seed them from the database, then ask again).

local amount = tonumber(ARGV[1])
local unseeded = {-1}
for i = 1, scopes do
  if redis.call('HGET', KEYS[3 * i - 2], 'seeded') ~= '1' then unseeded[#unseeded + 1] = i end
end
if #unseeded > 1 then return unseeded end
-- A reservation id already held (a provider batch's line, reserved again when its sender is
-- resumed or its poll renews it): its expiry is pushed back, nothing more is held.
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  local lifetime = tonumber(ARGV[3])
  for i = 1, scopes do
    if redis.call('ZSCORE', KEYS[3 * i], ARGV[2]) then
      redis.call('ZADD', KEYS[3 * i], now + lifetime, ARGV[2])
      redis.call('PEXPIRE', KEYS[3 * i - 1], math.ceil(lifetime / 1000) + 1000)
      redis.call('PEXPIRE', KEYS[3 * i], math.ceil(lifetime / 1000) + 1000)
    end
  end
  return {1, now}
end
for i = 1, scopes do
  local v = redis.call('HMGET', KEYS[3 * i - 2], 'spent', 'held')
  local spent = tonumber(v[1] or '0')
  local held = tonumber(v[2] or '0')
  if held < 0 then held = 0 end
  local remaining = tonumber(ARGV[4 + i]) - spent - held
  -- A spent budget refuses every call, even one that costs nothing (an unpriced model).
  if remaining <= 0 or amount > remaining then return {0, i, spent, held} end
end
local lifetime = tonumber(ARGV[3])
for i = 1, scopes do
  local acct, res, exp = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('HSET', res, ARGV[2], amount)
  redis.call('ZADD', exp, now + lifetime, ARGV[2])
  redis.call('HINCRBY', acct, 'held', amount)
  redis.call('PEXPIRE', acct, ARGV[4])
  -- every reservation lives as long: the newest expires last
  redis.call('PEXPIRE', res, math.ceil(lifetime / 1000) + 1000)
  redis.call('PEXPIRE', exp, math.ceil(lifetime / 1000) + 1000)
end
return {1, now}
