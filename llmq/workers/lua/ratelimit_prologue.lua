-- Prologue of the rate limiter's request/token scripts (joined in front of them in Python):
-- the Redis clock in µs (now), and eviction of the log entries that left the window
-- (score <= now - window), subtracting their tokens from the sum; leaves count and used.
-- KEYS: 1 log, 2 tok, 3 sum. ARGV: 1 window_us.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cutoff = now - tonumber(ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  local freed = 0
  for i = 1, #old, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #old) do chunk[#chunk + 1] = old[j] end
    local values = redis.call('HMGET', KEYS[2], unpack(chunk))
    for k = 1, #values do
      if values[k] then freed = freed + tonumber(values[k]) end
    end
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  redis.call('DECRBY', KEYS[3], freed)
end
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if count == 0 then
  -- self-healing: an empty window holds no tokens
  used = 0
  redis.call('DEL', KEYS[3], KEYS[2])
elseif used < 0 then
  used = 0
  redis.call('SET', KEYS[3], 0, 'KEEPTTL')
end
