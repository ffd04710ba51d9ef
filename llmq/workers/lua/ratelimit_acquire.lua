-- The admission: slots, requests, tokens and the line, in one script (after ratelimit_prologue
-- and ratelimit_line).
-- KEYS: log, tok, sum, slots, line, due, want, owner.
-- ARGV: 1 window_us, 2 rpm (0: none), 3 tpm (0: none), 4 tokens, 5 member, 6 key_ttl_ms,
--       7 cap (0: no slot wanted), 8 holder, 9 lease_us,
--       10 job id ('': do not join the line), 11 grace_us, 12 slot_poll_us, 13 slot_rank_step_us,
--       14 slot_wait_max_us, 15 turn_wait_us,
--       16 tenant, 17 weight (>= 1), 18 bulk ('1': bulk, else interactive), 19 tenant key prefix,
--       20 the most windows a job far back in the line waits (rpm)
-- → {1, now_us, rank} when admitted, {0, wait_us, rank} when not (rank: jobs ahead in the line).

local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local cap = tonumber(ARGV[7])
local holder = ARGV[8]
local job = ARGV[10]
local fq = ARGV[19]
local tenant = ARGV[16]
local weight = tonumber(ARGV[17])
if weight < 1 then weight = 1 end
if tpm > 0 and tokens > tpm then tokens = tpm end

local held = 0
local holds = false
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  held = redis.call('ZCARD', KEYS[4])
  holds = redis.call('ZSCORE', KEYS[4], holder) ~= false
end

-- The line: forget the jobs that did not come back in time, then find this job's rank. A job
-- new to a line that is not empty takes its fair place first (and leaves it again if admitted).
line_drop_lapsed(KEYS[5], KEYS[6], KEYS[7], KEYS[8], fq, now)
local waiting = redis.call('ZCARD', KEYS[5])
local rank = waiting
local in_line = false
if waiting > 0 and job ~= '' then
  local owner = redis.call('HGET', KEYS[8], job)
  if owner then
    tenant = owner
  else
    line_join(KEYS[5], KEYS[8], fq, job, tenant, weight, ARGV[18] == '1', now)
    waiting = waiting + 1
  end
  in_line = true
  local r = line_rank(KEYS[5], fq, job, tenant)
  if r then rank = r end
end

-- Would the job still fit once every job ahead of it had taken its share? If not, when?
local wait = 0
if cap > 0 and not holds and held + rank >= cap then
  wait = math.min(tonumber(ARGV[12]) + rank * tonumber(ARGV[13]), tonumber(ARGV[14]))
end
if rpm > 0 and count + rank >= rpm then
  -- (count - rpm + 1 + rank) entries must leave; the last of them is at index count - rpm + rank.
  local index = count - rpm + rank
  local w = window
  if index < count then
    local entry = redis.call('ZRANGE', KEYS[1], index, index, 'WITHSCORES')
    w = tonumber(entry[2]) + window - now
  else
    -- rpm or more places back: at most rpm admissions fit in a window, so its turn is at least
    -- floor(rank / rpm) windows away (a few windows at most: jobs ahead may leave early).
    w = window * math.min(math.floor(rank / rpm), tonumber(ARGV[20]))
  end
  if w > wait then wait = w end
end
if tpm > 0 then
  local excess = used + tokens - tpm
  -- The tokens the jobs ahead want come first (summed only as far as the window could free).
  -- The turns of a tenant ahead of this job are its first ones, held by its first jobs.
  local i = 0
  local counted = {}
  while i < rank and excess <= used do
    local ahead = redis.call('ZRANGE', KEYS[5], i, math.min(i + 199, rank - 1))
    local per, order = {}, {}
    for k = 1, #ahead do
      local t = line_tenant_of(ahead[k])
      if not per[t] then per[t] = 0; order[#order + 1] = t end
      per[t] = per[t] + 1
    end
    for _, t in ipairs(order) do
      local from = counted[t] or 0
      local jobs = redis.call('ZRANGE', line_jobs(fq, t), from, from + per[t] - 1)
      if #jobs > 0 then
        local values = redis.call('HMGET', KEYS[7], unpack(jobs))
        for k = 1, #values do excess = excess + tonumber(values[k] or '0') end
      end
      counted[t] = from + per[t]
    end
    i = i + 200
  end
  if excess > 0 then
    local freed = 0
    local from = 0
    local found = false
    while not found and excess <= used do
      local batch = redis.call('ZRANGE', KEYS[1], from, from + 199, 'WITHSCORES')
      if #batch == 0 then break end
      for k = 1, #batch, 2 do
        freed = freed + tonumber(redis.call('HGET', KEYS[2], batch[k]) or '0')
        if freed >= excess then
          local w = tonumber(batch[k + 1]) + window - now
          if w > wait then wait = w end
          found = true
          break
        end
      end
      from = from + 200
    end
    if not found and window > wait then wait = window end
  end
end

if wait > 0 then
  -- Refused. Not first in line: at least a short wait, never a busy loop.
  local turn_wait = tonumber(ARGV[15])
  if rank > 0 and wait < turn_wait then wait = turn_wait end
  if job ~= '' then
    if not in_line then line_join(KEYS[5], KEYS[8], fq, job, tenant, weight, ARGV[18] == '1', now) end
    redis.call('ZADD', KEYS[6], now + wait + tonumber(ARGV[11]), job)
    if tpm > 0 then redis.call('HSET', KEYS[7], job, tokens) end
    local last = redis.call('ZRANGE', KEYS[6], -1, -1, 'WITHSCORES')
    local ttl = math.ceil((tonumber(last[2]) - now) / 1000) + 1000
    for k = 5, 8 do redis.call('PEXPIRE', KEYS[k], ttl) end
    redis.call('PEXPIRE', line_turns(fq, tenant), ttl)
    redis.call('PEXPIRE', line_jobs(fq, tenant), ttl)
  end
  return {0, wait, rank}
end

if in_line then line_remove(KEYS[5], KEYS[6], KEYS[7], KEYS[8], fq, job) end
if cap > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[9]), holder)
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[4], math.ceil((tonumber(last[2]) - now) / 1000) + 1000)
end
if rpm > 0 or tpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('HSET', KEYS[2], ARGV[5], tokens)
  redis.call('INCRBY', KEYS[3], tokens)
  for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[6]) end
end
return {1, now, rank}
