-- After ratelimit_line. KEYS: line, due, want, owner. ARGV: 1 tenant key prefix
-- → the job ids of the line (its lapsed places dropped first), in the order they will be served.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
line_drop_lapsed(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], now)
local turns = redis.call('ZRANGE', KEYS[1], 0, -1)
local seen, out = {}, {}
for i = 1, #turns do
  local tenant = line_tenant_of(turns[i])
  local k = seen[tenant] or 0
  local job = redis.call('ZRANGE', line_jobs(ARGV[1], tenant), k, k)
  if #job > 0 then out[#out + 1] = job[1] end
  seen[tenant] = k + 1
end
return out
