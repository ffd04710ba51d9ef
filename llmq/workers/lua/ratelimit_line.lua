-- The model's line, as fair shares (joined in front of ratelimit_acquire and
-- ratelimit_leave_line). See the notes of workers/ratelimit.py for the design.
--
--   line        ZSET  turn → virtual-time tag     (one turn per waiting job, named
--                     "<µs of the join>|<tag>|<tenant>": equal tags go in the order they joined)
--   <fq><t>:s   ZSET  turn → tag                  (tenant t's turns, the same entries as the line)
--   <fq><t>:j   ZSET  job → order within t         (interactive first, then bulk; FIFO in each)
--   owner       HASH  job → tenant
--   due, want   as before (job → when its place lapses; job → tokens it will reserve)
--
-- Tenant t's k-th job (by order) holds t's k-th turn (by tag): the jobs of one tenant share its
-- turns, so its interactive work overtakes its bulk work without the tenant getting more turns.

-- 2^52: added to a bulk job's order (µs of its first wait), so every bulk job orders after
-- every interactive job of its tenant while both stay exact integers in a double.
local BULK_ORDER = 4503599627370496

local function line_turns(fq, t) return fq .. t .. ':s' end
local function line_jobs(fq, t) return fq .. t .. ':j' end

local function line_tenant_of(turn)
  return string.match(turn, '^[^|]*|[^|]*|(.*)$') or ''
end

-- Take `job` out of the line with the turn it holds. Returns true when it was in the line.
local function line_remove(line, due, want, owner, fq, job)
  local t = redis.call('HGET', owner, job)
  redis.call('ZREM', due, job)
  redis.call('HDEL', want, job)
  if not t then
    redis.call('ZREM', line, job)  -- an entry of the former line (job → first wait), if any
    return false
  end
  redis.call('HDEL', owner, job)
  local k = redis.call('ZRANK', line_jobs(fq, t), job)
  if not k then
    -- The tenant's keys expired before its entries in the line (no script ran for a while):
    -- drop its turns from the line by name, so that none is left holding a place.
    local all = redis.call('ZRANGE', line, 0, -1)
    for i = 1, #all do
      if line_tenant_of(all[i]) == t then redis.call('ZREM', line, all[i]) end
    end
    redis.call('DEL', line_turns(fq, t))
    return true
  end
  redis.call('ZREM', line_jobs(fq, t), job)
  local turn = redis.call('ZRANGE', line_turns(fq, t), k, k)
  if #turn > 0 then
    redis.call('ZREM', line_turns(fq, t), turn[1])
    redis.call('ZREM', line, turn[1])
  end
  return true
end

-- Give `job` of tenant `t` (weight w, bulk or not) its place: a new turn for the tenant, tagged
-- max(V, the tenant's last tag + 1/w), V the tag of the head of the line (0 when empty).
local function line_join(line, owner, fq, job, t, w, bulk, now)
  local v = 0
  local head = redis.call('ZRANGE', line, 0, 0, 'WITHSCORES')
  if #head > 0 then v = tonumber(head[2]) end
  local tag = v
  local last = redis.call('ZRANGE', line_turns(fq, t), -1, -1, 'WITHSCORES')
  if #last > 0 then
    local f = tonumber(last[2]) + 1 / w
    if f > tag then tag = f end
  end
  local turn = string.format('%017.0f', now) .. '|' .. string.format('%.17g', tag) .. '|' .. t
  redis.call('ZADD', line, tag, turn)
  redis.call('ZADD', line_turns(fq, t), tag, turn)
  local order = now
  if bulk then order = now + BULK_ORDER end
  redis.call('ZADD', line_jobs(fq, t), order, job)
  redis.call('HSET', owner, job, t)
end

-- The rank of `job` (of tenant t) in the line: the turns ahead of the one it holds; nil when
-- the job is not in the line.
local function line_rank(line, fq, job, t)
  local k = redis.call('ZRANK', line_jobs(fq, t), job)
  if not k then return nil end
  local turn = redis.call('ZRANGE', line_turns(fq, t), k, k)
  if #turn == 0 then return nil end
  return redis.call('ZRANK', line, turn[1])
end

-- Forget the jobs that did not come back in time (past their due).
local function line_drop_lapsed(line, due, want, owner, fq, now)
  local lapsed = redis.call('ZRANGEBYSCORE', due, '-inf', now)
  for i = 1, #lapsed do line_remove(line, due, want, owner, fq, lapsed[i]) end
end
