-- After breaker_prologue. KEYS: state, calls, fails, probe.
-- ARGV: success (1/0), probe (1/0), call id, failures, failure_ratio, window_us, min_calls,
--       cooldown_us, state_ttl_ms
-- → the state after the result: 'closed' or 'open'.

local success = ARGV[1] == '1'
local state_ttl = tonumber(ARGV[9])
local function open_it()
  -- The window and the consecutive count stay, for snapshot(); closing resets them.
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'open_until', now + tonumber(ARGV[8]))
  redis.call('PEXPIRE', KEYS[1], state_ttl)
  return 'open'
end
if redis.call('HGET', KEYS[1], 'state') == 'open' then
  if ARGV[2] ~= '1' then return 'open' end
  if success then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
    return 'closed'
  end
  redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
  return open_it()
end
local window = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
redis.call('ZADD', KEYS[2], now, ARGV[3])
local consecutive = 0
if success then
  redis.call('HSET', KEYS[1], 'consecutive', 0)
else
  redis.call('ZADD', KEYS[3], now, ARGV[3])
  consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
end
local calls = redis.call('ZCARD', KEYS[2])
local fails = redis.call('ZCARD', KEYS[3])
if consecutive >= tonumber(ARGV[4])
   or (calls >= tonumber(ARGV[7]) and fails >= tonumber(ARGV[5]) * calls) then
  return open_it()
end
local window_ms = math.ceil(window / 1000) + 1000
redis.call('PEXPIRE', KEYS[2], window_ms)
redis.call('PEXPIRE', KEYS[3], window_ms)
redis.call('PEXPIRE', KEYS[1], state_ttl)
return 'closed'
