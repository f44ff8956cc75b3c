-- tower-rest-ratelimit: the Redis store's one script (ARCHITECTURE.md §9.6).
-- A port of the memory store's rules (limiter/bucket.rs, limiter/global.rs,
-- limiter/memory.rs), on Redis' clock, in milliseconds.
--
-- KEYS[1]: one token's prefix, `P:{fingerprint}:`; KEYS[2]: `P:` (every
-- token's invalid-request count). ARGV[1]: the operation; ARGV[2]: now in ms
-- ('' = Redis' TIME). Every key written gets a PEXPIRE here.
--
-- Keys under KEYS[1]:
--   auth   hash: thr (global throttle end), kv (latest answer valid), ep
--          (remap epoch), eff/step/ghold/nraise/raised (the global limit's
--          creep after a global 429)
--   gif    zset: lease -> deadline, global slots in flight
--   gend   zset: lease -> when its slot frees (answer + 1 s)
--   grej   zset: global 429s of the last second
--   routes hash: route -> bucket hash, route#e -> epoch of its last remap
--   inv    hash: 10 s slot -> invalid requests; if: zset lease -> deadline
--          (requests in flight, against the ceilings)
--   b:<id>:<major>  hash: the bucket (lim rem rst win wend blk unl gen mov used)
--   l:<id>:<major>  zset: lease -> deadline, the bucket's requests in flight
-- Under KEYS[2]: inv, if (every token together).

local base, total = KEYS[1], KEYS[2]
local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local SECOND = 1000
local DAY = 86400000
local ID_SKEW = 2000
local TOLERANCE = 100
local FALLBACK_RESET = 1000
local INVALID_WINDOW = 600000
local INVALID_SLOT = 10000
local MAX_HOLD = 8000

local function num(s)
  local n = tonumber(s)
  if n == nil or n < 0 then return nil end
  return n
end

-- A deadline at most a day ahead.
local function clamp(t) return math.min(t, now + DAY) end

-- A TTL until `at`.
local function expire(key, at)
  redis.call('PEXPIRE', key, math.max(math.floor(clamp(at) - now), 1))
end

-- A TTL until `at`, never shorter than the key has: for a key written as
-- of an older instant (an answer's), which must not cut what a write as of
-- a newer one set.
local function extend(key, at)
  local ms = math.max(math.floor(clamp(at) - now), 1)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- A hash as a table of numbers.
local function load(key)
  local v = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #v, 2 do t[v[i]] = tonumber(v[i + 1]) end
  return t
end

local function save(key, t, fields, until_at)
  local args, gone = {}, {}
  for _, f in ipairs(fields) do
    if t[f] ~= nil then
      args[#args + 1] = f
      args[#args + 1] = string.format('%.0f', t[f])
    else
      gone[#gone + 1] = f
    end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
    expire(key, until_at)
  end
end

-- Live members of a zset of deadlines.
local function live(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

local function last_score(key)
  local v = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #v == 0 then return nil end
  return tonumber(v[2])
end

local function zexpire(key)
  local s = last_score(key)
  if s then expire(key, s + SECOND) end
end

-- ---------------------------------------------------------------- invalid
local function inv_count(key)
  local v = redis.call('HGETALL', key)
  local n, old = 0, {}
  for i = 1, #v, 2 do
    local slot = tonumber(v[i])
    if slot * INVALID_SLOT + INVALID_WINDOW <= now then
      old[#old + 1] = v[i]
    else
      n = n + tonumber(v[i + 1])
    end
  end
  if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  return n
end

local function inv_add(key, at)
  local slot = math.floor(at / INVALID_SLOT)
  redis.call('HINCRBY', key, slot, 1)
  extend(key, (slot + 1) * INVALID_SLOT + INVALID_WINDOW + 10 * SECOND)
end

-- 'open', 'held', or 'reached' with the count.
local function ceiling(prefix, limit)
  if limit < 0 then return 'open', 0 end
  local count = inv_count(prefix .. 'inv')
  if count >= limit then return 'reached', count end
  if count + live(prefix .. 'if') >= limit then return 'held', count end
  return 'open', count
end

local function start_flight(id, deadline)
  redis.call('ZADD', base .. 'if', deadline, id)
  zexpire(base .. 'if')
  redis.call('ZADD', total .. 'if', deadline, id)
  zexpire(total .. 'if')
end

local function end_flight(id)
  redis.call('ZREM', base .. 'if', id)
  redis.call('ZREM', total .. 'if', id)
end

-- --------------------------------------------------------------- the token
local AUTH_FIELDS = {'thr', 'kv', 'eff', 'step', 'ghold', 'nraise', 'raised'}

local function save_auth(a)
  local until_at = now + INVALID_WINDOW
  if a.thr then until_at = math.max(until_at, a.thr) end
  if a.nraise then until_at = math.max(until_at, a.nraise + 20 * SECOND) end
  save(base .. 'auth', a, AUTH_FIELDS, until_at + 10 * SECOND)
end

-- The proactive global limit (limiter/global.rs, GlobalLimit).
local function grefresh(a, conf)
  redis.call('ZREMRANGEBYSCORE', base .. 'gend', '-inf', now)
  redis.call('ZREMRANGEBYSCORE', base .. 'grej', '-inf', now)
  local eff = math.min(a.eff or conf, conf)
  local step, nraise = a.step or 1, a.nraise or now
  while eff < conf and nraise <= now do
    eff = math.min(eff + step, conf)
    step = step * 2
    a.raised = nraise
    nraise = nraise + SECOND
  end
  if eff >= conf then
    a.eff, a.step, a.ghold, a.nraise = nil, nil, nil, nil
  else
    a.eff, a.step, a.nraise = eff, step, nraise
  end
  if a.raised and (a.raised + 2 * SECOND <= now or eff >= conf) then a.raised = nil end
  return eff
end

-- nil: go; -1: after an answer; else when.
local function gcheck(a, conf)
  local eff = grefresh(a, conf)
  local inflight = live(base .. 'gif')
  local ends = redis.call('ZCARD', base .. 'gend')
  local held = inflight + ends
  if held < eff then return nil end
  local creep = nil
  if eff < conf then creep = a.nraise end
  if inflight >= eff then return creep or -1 end
  local v = redis.call('ZRANGE', base .. 'gend', held - eff, held - eff, 'WITHSCORES')
  local freed = tonumber(v[2]) or (now + SECOND)
  if creep then return math.min(creep, freed) end
  return freed
end

local function gfinish(id, at)
  if redis.call('ZREM', base .. 'gif', id) == 1 then
    redis.call('ZADD', base .. 'gend', at + SECOND, id)
    zexpire(base .. 'gend')
  end
end

local function glower(a, conf, at, id)
  grefresh(a, conf)
  redis.call('ZADD', base .. 'grej', at + SECOND, id)
  zexpire(base .. 'grej')
  local held = live(base .. 'gif') + redis.call('ZCARD', base .. 'gend')
  local admitted = math.max(held - redis.call('ZCARD', base .. 'grej'), 1)
  local eff = a.eff or conf
  if admitted < eff then eff = admitted end
  if a.raised then
    a.raised = nil
    a.ghold = math.min((a.ghold or SECOND) * 2, MAX_HOLD)
  end
  a.step = 1
  if eff < conf then
    a.eff = eff
    a.nraise = at + SECOND + (a.ghold or SECOND)
  end
end

-- ------------------------------------------------------------------ bucket
local BUCKET_FIELDS = {'lim', 'rem', 'rst', 'win', 'wend', 'blk', 'unl', 'gen', 'mov', 'used'}

local function bkey(id, major) return base .. 'b:' .. id .. ':' .. major end
local function lkey(id, major) return base .. 'l:' .. id .. ':' .. major end

-- A lease carried by a remap (§4.5) is in several lease sets: `c:<id>`
-- names them, so that its end frees it in every one.
local function carry_lease(id, deadline, to)
  redis.call('ZADD', to, deadline, id)
  local c = base .. 'c:' .. id
  redis.call('SADD', c, to)
  expire(c, deadline + SECOND)
end

local function end_lease(id)
  local c = base .. 'c:' .. id
  for _, k in ipairs(redis.call('SMEMBERS', c)) do redis.call('ZREM', k, id) end
  redis.call('DEL', c)
end

local function save_bucket(key, lk, b, expire_after)
  local until_at = math.max(now, b.used or now)
  for _, t in ipairs({b.rst, b.blk, last_score(lk)}) do
    if t then until_at = math.max(until_at, t) end
  end
  -- A new bucket's first generation is its birth: a lease of an earlier
  -- life of the key (before a restart, a flush, an expiry) never matches.
  b.gen = b.gen or now
  b.rem = b.rem or 0
  b.mov = b.mov or now
  save(key, b, BUCKET_FIELDS, until_at + expire_after)
  zexpire(lk)
end

local function refresh(b, inflight)
  if b.blk and b.blk <= now then b.blk = nil end
  if not b.lim then return end
  if b.rst and b.rst <= now then
    b.rem = math.max(b.lim - inflight, 0)
    b.rst = nil
    b.gen = (b.gen or now) + 1
    b.mov = now
  elseif not b.rst and inflight == 0 and (b.rem or 0) == 0 then
    b.rst = now + FALLBACK_RESET
  end
end

-- nil: go; -1: after an answer; else when.
local function check(b, inflight)
  refresh(b, inflight)
  if b.blk then return b.blk end
  if b.unl == 1 then return nil end
  if not b.lim then
    if inflight == 0 then return nil end
    return -1
  end
  if (b.rem or 0) > 0 then return nil end
  return b.rst or -1
end

local function known_wait(b)
  local w = nil
  if b.blk then
    w = b.blk
  elseif b.lim and (b.rem or 0) == 0 and b.unl ~= 1 then
    w = b.rst
  end
  if w and w > now then return w end
  return nil
end

local function block(b, until_at, exhausted)
  b.blk = math.max(b.blk or until_at, until_at)
  if exhausted and b.lim then
    b.rem = 0
    b.rst = until_at
    if b.win and not b.wend then b.wend = until_at end
  end
end

local function place(b, id, at)
  if not (b.win and b.wend) then return nil end
  local placed = b.wend + (id - b.win)
  if placed <= at + DAY and placed + DAY >= at then return placed end
  return nil
end

local function believes(b, id, reset)
  if not (b.win and b.wend and reset) then return false end
  return math.abs((reset - b.wend) - (id - b.win)) <= ID_SKEW
end

-- Learns from an answer's headers, received at `at` (limiter/bucket.rs,
-- Bucket::apply).
local function apply(b, f, at, inflight, granted)
  b.used = at
  b.unl = nil
  local fresh = b.lim == nil
  if f.limit then
    b.lim = f.limit
    b.rem = math.min(b.rem or 0, f.limit)
  end
  if not b.lim then return end
  local lim = b.lim
  local id = f.window
  local reset = nil
  if f.reset_after then
    reset = at + f.reset_after
  elseif id then
    reset = place(b, id, at)
  end
  local believed = nil
  if id and not fresh and believes(b, id, reset) then believed = id end
  local order
  if fresh then
    order = 'later'
  elseif believed then
    if b.win and believed > b.win then
      order = 'later'
    elseif b.win and believed < b.win then
      order = 'stale'
    elseif not b.rst and b.wend and b.wend <= at then
      order = 'stale'
    else
      order = 'same'
    end
  else
    local contradicted = id and b.win and id <= b.win
    local over = (not b.wend) or at + TOLERANCE >= b.wend
    if not b.rst then
      order = 'later'
    elseif reset and reset > b.rst + TOLERANCE and over and not contradicted then
      order = 'later'
    else
      order = 'same'
    end
  end
  local header_rem = math.min(f.remaining or b.rem or 0, lim)
  if order == 'stale' then
    -- Landed in a window that is over: the current one counted it in
    -- flight when it began, and need not.
    if believed and granted and granted ~= b.gen then
      b.rem = math.min((b.rem or 0) + 1, lim)
    end
    return
  end
  if order == 'later' then
    local left = math.max(header_rem - inflight, 0)
    if fresh or b.rst then
      b.rem = left
    elseif believed then
      -- The window a local refill opened: every request then in flight and
      -- every grant since is counted already.
      b.rem = math.min(b.rem or 0, header_rem)
    else
      b.rem = math.min(b.rem or 0, left)
    end
    b.rst = reset
    b.win = id
    b.wend = reset
    b.gen = (b.gen or at) + 1
    b.mov = at
  else
    b.rem = math.min(b.rem or 0, header_rem)
    if reset then b.rst = math.max(b.rst or reset, reset) end
    if believed or (not id and not b.win) then
      if reset and b.wend then b.wend = math.min(b.wend, reset) end
    end
  end
  if b.rem == 0 and not b.rst then b.rst = at + FALLBACK_RESET end
end

-- Something flies or is held at this key.
local function busy(id, major)
  local key = bkey(id, major)
  if redis.call('EXISTS', key) == 0 then return false end
  if live(lkey(id, major)) > 0 then return true end
  return known_wait(load(key)) ~= nil
end

-- The answer's facts, from ARGV[i] on (store/redis/mod.rs, facts_args).
local function read_facts(i)
  local f = {}
  f.age = num(ARGV[i]) or 0
  f.bucket = ARGV[i + 1]
  if f.bucket == '' then f.bucket = nil end
  f.limit = num(ARGV[i + 2])
  f.remaining = num(ARGV[i + 3])
  f.reset_after = num(ARGV[i + 4])
  f.window = num(ARGV[i + 5])
  f.any_header = ARGV[i + 6] == '1'
  f.rejected = ARGV[i + 7] == '1'
  f.shared = ARGV[i + 8] == '1'
  f.global = ARGV[i + 9] == '1'
  f.hold = num(ARGV[i + 10])
  f.invalid = ARGV[i + 11] == '1'
  f.success = ARGV[i + 12] == '1'
  f.has_bucket_headers = f.bucket ~= nil or f.limit ~= nil or f.remaining ~= nil
  return f
end

-- What an answer says of the token: invalid requests, a global 429.
local function observe_token(a, f, at, conf, id)
  if f.invalid then
    inv_add(base .. 'inv', at)
    inv_add(total .. 'inv', at)
    a.kv = 0
  else
    a.kv = 1
  end
  if f.rejected and f.global and f.hold then
    a.thr = clamp(math.max(a.thr or 0, at + f.hold))
    if conf > 0 then glower(a, conf, at, id) end
  end
end

-- A request that left ended without an answer: one sent may have come back
-- invalid, unless the token's latest answer was valid.
local function lost(a, at)
  if a.kv ~= 1 then
    inv_add(base .. 'inv', at)
    inv_add(total .. 'inv', at)
  end
end

local function counts()
  return {inv_count(base .. 'inv'), inv_count(total .. 'inv')}
end

-- ------------------------------------------------------------- operations
if op == 'acquire' then
  local route, major = ARGV[3], ARGV[4]
  local global = ARGV[5] == '1'
  local conf = tonumber(ARGV[6])
  local own_ceiling, all_ceiling = tonumber(ARGV[7]), tonumber(ARGV[8])
  local id = ARGV[9]
  local deadline = now + tonumber(ARGV[10])
  local expire_after = tonumber(ARGV[11])

  local own, own_n = ceiling(base, own_ceiling)
  if own == 'reached' then return {-1, own_n, own_ceiling} end
  local all, all_n = ceiling(total, all_ceiling)
  if all == 'reached' then return {-2, all_n, all_ceiling} end
  local held = own == 'held' or all == 'held'
  -- The counts, when a ceiling made them known (-1: not counted).
  if own_ceiling < 0 then own_n = -1 end
  if all_ceiling < 0 then all_n = -1 end

  local a = load(base .. 'auth')
  local throttled = nil
  if global and a.thr and a.thr > now then throttled = a.thr end

  -- The key: the route's bucket hash once known (ARCHITECTURE.md §4.1);
  -- its first request of a new major may still fly or be held by route.
  local hash = redis.call('HGET', base .. 'routes', route)
  local kid
  if hash then
    kid = 'h:' .. hash
    if redis.call('EXISTS', bkey(kid, major)) == 0 and busy('r:' .. route, major) then
      kid = 'r:' .. route
      hash = false
    end
  else
    kid = 'r:' .. route
  end
  local key, lk = bkey(kid, major), lkey(kid, major)
  local b = load(key)
  local inflight = live(lk)
  local reply_hash = hash or ''
  -- The remap epoch lives with the route map, which outlives `auth`.
  local epoch = tonumber(redis.call('HGET', base .. 'routes', '#ep') or '') or 0

  local function wait(code, until_at)
    local w = -1
    if until_at ~= -1 then w = math.max(math.floor(until_at - now), 0) end
    return {code, w, reply_hash, 0, 0, 0, own_n, all_n}
  end
  if throttled then return wait(3, throttled) end
  local c = check(b, inflight)
  if c then
    if next(b) ~= nil then save_bucket(key, lk, b, expire_after) end
    return wait(2, c)
  end
  if held then return wait(5, -1) end
  local gslot = 0
  if global and conf > 0 then
    local g = gcheck(a, conf)
    if g then
      save_auth(a)
      return wait(4, g)
    end
    redis.call('ZADD', base .. 'gif', deadline, id)
    zexpire(base .. 'gif')
    gslot = 1
  end
  b.gen = b.gen or now
  local gen = b.gen
  b.rem = math.max((b.rem or 0) - 1, 0)
  b.used = now
  redis.call('ZADD', lk, deadline, id)
  save_bucket(key, lk, b, expire_after)
  start_flight(id, deadline)
  save_auth(a)
  return {1, 0, reply_hash, gen, gslot, epoch, own_n, all_n}

elseif op == 'pass' then
  local own_ceiling, all_ceiling = tonumber(ARGV[3]), tonumber(ARGV[4])
  local id = ARGV[5]
  local deadline = now + tonumber(ARGV[6])
  local own, own_n = ceiling(base, own_ceiling)
  if own == 'reached' then return {-1, own_n, own_ceiling} end
  local all, all_n = ceiling(total, all_ceiling)
  if all == 'reached' then return {-2, all_n, all_ceiling} end
  if own == 'held' or all == 'held' then return {0} end
  start_flight(id, deadline)
  return {1}

elseif op == 'record' or op == 'release' then
  local route, major, gid, id = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local gen = tonumber(ARGV[7])
  local a = load(base .. 'auth')
  local routes = base .. 'routes'
  local current = redis.call('HGET', routes, route)
  local gk, glk = bkey(gid, major), lkey(gid, major)
  -- Whether the lease was live here: one of an earlier life of the key
  -- (expired, or the state lost) was reserved by no window of this one.
  local was_live = redis.call('ZREM', glk, id) == 1
  -- Carried to other buckets by remaps (§4.5): ends there too.
  end_lease(id)
  end_flight(id)

  if op == 'release' then
    local gslot, sent = ARGV[8] == '1', ARGV[9] == '1'
    local conf, expire_after = tonumber(ARGV[10]), tonumber(ARGV[11])
    if gslot then
      if sent then
        gfinish(id, now)
      elseif redis.call('ZREM', base .. 'gif', id) == 1 then
        zexpire(base .. 'gif')
      end
    end
    if redis.call('EXISTS', gk) == 1 then
      local b = load(gk)
      if was_live and not sent and gen == b.gen and b.lim then
        b.rem = math.min((b.rem or 0) + 1, b.lim)
      end
      save_bucket(gk, glk, b, expire_after)
    end
    if sent then lost(a, now) end
    save_auth(a)
    return counts()
  end

  local epoch = tonumber(ARGV[8])
  local gslot = ARGV[9] == '1'
  local conf, expire_after = tonumber(ARGV[10]), tonumber(ARGV[11])
  local f = read_facts(12)
  local at = now - f.age
  if gslot then gfinish(id, at) end
  observe_token(a, f, at, conf, id)

  -- The route's bucket hash, learned or changed (§4.5).
  local target, carry, stale = nil, false, false
  if f.bucket then
    local remapped = tonumber(redis.call('HGET', routes, route .. '#e') or '')
    stale = current and current ~= f.bucket and remapped ~= nil and epoch < remapped
    local known = nil
    if not stale then
      if current == f.bucket then
        known = current
      else
        if string.sub(gid, 1, 2) == 'r:' then
          carry = gid == 'r:' .. route
        else
          carry = current and gid == 'h:' .. current
        end
        if current then
          local ep = redis.call('HINCRBY', routes, '#ep', 1)
          redis.call('HSET', routes, route .. '#e', ep)
        end
        redis.call('HSET', routes, route, f.bucket)
        known = f.bucket
      end
      redis.call('PEXPIRE', routes, DAY)
    end
    if known and gid ~= 'h:' .. known then target = 'h:' .. known end
  end

  local moved = target ~= nil
  local carried = {}
  if carry and moved then
    redis.call('ZREMRANGEBYSCORE', glk, '-inf', now)
    carried = redis.call('ZRANGE', glk, 0, -1, 'WITHSCORES')
  end
  local key, lk = gk, glk
  if moved then
    key, lk = bkey(target, major), lkey(target, major)
    for i = 1, #carried, 2 do carry_lease(carried[i], tonumber(carried[i + 1]), lk) end
  elseif redis.call('EXISTS', gk) == 0 then
    save_auth(a)
    return counts()
  end
  local b = load(key)
  local inflight = live(lk)
  local named = (not stale) and (string.sub(gid, 1, 2) == 'h:' or f.bucket ~= nil)
  if f.rejected and f.hold and not f.global then
    block(b, at + f.hold, not f.shared)
  elseif f.has_bucket_headers and named then
    local granted = nil
    if was_live and not moved then granted = gen end
    apply(b, f, at, inflight, granted)
  elseif f.success and not f.any_header then
    if not b.lim then b.unl = 1 end
  end
  b.used = math.max(b.used or now, now)
  save_bucket(key, lk, b, expire_after)

  if moved and string.sub(gid, 1, 2) == 'r:' then
    -- The entry by route has served its purpose once nothing flies or is
    -- held there.
    if redis.call('EXISTS', gk) == 1 and live(glk) == 0 and known_wait(load(gk)) == nil then
      redis.call('DEL', gk, glk)
    end
  end
  save_auth(a)
  return counts()

elseif op == 'end_pass' then
  local id, answered, sent = ARGV[3], ARGV[4] == '1', ARGV[5] == '1'
  local conf = tonumber(ARGV[6])
  local f = read_facts(7)
  local a = load(base .. 'auth')
  end_flight(id)
  if answered then
    observe_token(a, f, now - f.age, conf, id)
  elseif sent then
    lost(a, now)
  end
  save_auth(a)
  return counts()

elseif op == 'forget' then
  -- A call that failed in its process (a timeout) may have been granted
  -- here all the same (a frozen Redis read it late): its request never
  -- went. Free its places; refund nothing (ARCHITECTURE.md §9.11).
  -- Also a write (record, release, end_pass) that Redis never ran: its
  -- lease ends as if released; a request that was sent keeps its global
  -- slot for a second, as after an answer.
  local route, major, id, gid, sent = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7] == '1'
  end_flight(id)
  if sent then
    gfinish(id, now)
  else
    redis.call('ZREM', base .. 'gif', id)
  end
  end_lease(id)
  if gid ~= '' then redis.call('ZREM', lkey(gid, major), id) end
  if route ~= '' then
    redis.call('ZREM', lkey('r:' .. route, major), id)
    local hash = redis.call('HGET', base .. 'routes', route)
    if hash then redis.call('ZREM', lkey('h:' .. hash, major), id) end
  end
  return counts()

elseif op == 'extend_429' then
  local gid, major = ARGV[3], ARGV[4]
  local conf, expire_after, id = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
  local f = read_facts(8)
  local at = now - f.age
  if not (f.rejected and f.hold) then return {0} end
  if f.global then
    local a = load(base .. 'auth')
    a.thr = clamp(math.max(a.thr or 0, at + f.hold))
    if conf > 0 then glower(a, conf, at, id) end
    save_auth(a)
    return {1}
  end
  if gid == '' then return {0} end
  local until_at = at + f.hold
  if until_at <= now then return {0} end
  if f.bucket then gid = 'h:' .. f.bucket end
  local key, lk = bkey(gid, major), lkey(gid, major)
  if redis.call('EXISTS', key) == 0 then return {0} end
  local b = load(key)
  if (b.mov or 0) > at then
    b.blk = math.max(b.blk or until_at, until_at)
  else
    block(b, until_at, not f.shared)
  end
  save_bucket(key, lk, b, expire_after)
  return {1}
end

return redis.error_reply('tower-rest-ratelimit: unknown operation ' .. tostring(op))
