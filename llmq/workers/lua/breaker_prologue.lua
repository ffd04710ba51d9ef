-- Prologue of the breaker scripts (joined in front of them in Python): the Redis clock in µs.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
