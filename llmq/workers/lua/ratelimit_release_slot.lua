-- After ratelimit_slots_prologue. KEYS: slots. ARGV: holder → 1 released, 0 not held.

return redis.call('ZREM', KEYS[1], ARGV[1])
