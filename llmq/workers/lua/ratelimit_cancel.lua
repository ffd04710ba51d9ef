-- After ratelimit_prologue. KEYS: log, tok, sum.
-- ARGV: window_us, member → 1 when the entry was in the window and is gone now, else 0.

if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
local tokens = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DECRBY', KEYS[3], tokens)
return 1
