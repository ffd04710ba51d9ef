-- KEYS: line, due, want. ARGV: job id → 1 when the job was in the line, else 0.

redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
