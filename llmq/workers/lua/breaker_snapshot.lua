-- After breaker_prologue. KEYS: state, calls, fails, probe. ARGV: window_us.
-- → {state, consecutive, calls, fails, opened_at_us, retry_us}

local st = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'open_until', 'consecutive')
local window = tonumber(ARGV[1])
local since = string.format('(%d', now - window)
local calls = redis.call('ZCOUNT', KEYS[2], since, '+inf')
local fails = redis.call('ZCOUNT', KEYS[3], since, '+inf')
local consecutive = tonumber(st[4] or '0')
if st[1] ~= 'open' then return {'closed', consecutive, calls, fails, 0, 0} end
local open_until = tonumber(st[3])
if now < open_until then return {'open', consecutive, calls, fails, st[2], open_until - now} end
local left = redis.call('PTTL', KEYS[4])
if left < 0 then left = 0 end
return {'half_open', consecutive, calls, fails, st[2], left * 1000}
