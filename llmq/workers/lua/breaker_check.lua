-- After breaker_prologue. KEYS: state, probe. ARGV: probe_timeout_ms, token.
-- → {allowed, state, retry_us, probe}

local st = redis.call('HMGET', KEYS[1], 'state', 'open_until')
if st[1] ~= 'open' then return {1, 'closed', 0, 0} end
local open_until = tonumber(st[2])
if now < open_until then return {0, 'open', open_until - now, 0} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then
  return {1, 'half_open', 0, 1}
end
local left = redis.call('PTTL', KEYS[2])
if left < 0 then left = 0 end
return {0, 'half_open', left * 1000, 0}
