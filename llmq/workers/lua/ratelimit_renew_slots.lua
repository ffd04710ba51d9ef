-- After ratelimit_slots_prologue. KEYS: slots.
-- ARGV: lease_us, holder... → the holders that no longer held a slot (lease expired or released).

local expiry = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
keep_key()
return lost
