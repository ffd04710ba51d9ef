-- After budget_prologue. What each scope has spent and holds now.
-- → {spent, held, seeded (0 | 1)} per scope, in order.

local out = {}
for i = 1, scopes do
  local v = redis.call('HMGET', KEYS[3 * i - 2], 'spent', 'held', 'seeded')
  out[#out + 1] = tonumber(v[1] or '0')
  out[#out + 1] = math.max(0, tonumber(v[2] or '0'))
  out[#out + 1] = v[3] == '1' and 1 or 0
end
return out
