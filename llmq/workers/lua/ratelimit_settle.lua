-- After ratelimit_prologue. KEYS: log, tok, sum.
-- ARGV: window_us, member, actual_tokens, key_ttl_ms → tokens added (negative: freed), or false
-- when the entry already left the window (nothing to correct).

if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return false end
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local after = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], after)
redis.call('INCRBY', KEYS[3], after - before)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return after - before
