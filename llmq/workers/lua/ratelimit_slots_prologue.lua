-- Prologue of the slot scripts (joined in front of them in Python). KEYS: 1 slots.
-- The clock (now, µs), eviction of expired holders (expiry <= now), and a helper, keep_key(),
-- that sets the key's TTL to cover its longest lease.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function keep_key()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last > 0 then
    redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) / 1000) + 1000)
  end
end
