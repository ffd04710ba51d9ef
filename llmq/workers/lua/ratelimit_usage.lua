-- After ratelimit_prologue. KEYS: log, tok, sum, slots, due.
-- ARGV: window_us → {count, used, in_flight, waiting}.

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local waiting = redis.call('ZCOUNT', KEYS[5], now + 1, '+inf')
return {count, used, redis.call('ZCARD', KEYS[4]), waiting}
