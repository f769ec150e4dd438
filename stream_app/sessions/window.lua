-- window.lua: apply one batch of events to ONE session, atomically.
--
-- The Redis twin of stream_app.sessions.windows.apply_events: same rules, same order, same integer
-- tallies. Keep the two in step; tests/integration/test_store_redis.py checks parity.
--
-- KEYS (all share one {hash tag}, see stream_app/core/keys.py):
--   1 window      ZSET  score = event time ms, member = hex(utf8 id) .. " " .. event json
--                       (equal scores sort by member bytes, i.e. by event id: the hex
--                       encoding keeps byte order and a shorter id sorts first, as in Python)
--   2 seen        SET   accepted event ids
--   3 aggregates  HASH  n, first, last, cart, psum, pcnt, pmax, uid, uidt, uidk, c:<type>
--   4 products    SET   distinct product ids
--   5 categories  SET   distinct categories
-- ARGV: 1 max_events, 2 session_gap_ms (also the TTL), 3 max_seen_ids, 4 the events as one
--   JSON array of string arrays: [id, hex id, time ms, type, user id, product id, category,
--   price cents ('' = none), event json]. One argument instead of nine per event: packing
--   and parsing arguments was the client's main cost.
-- Returns { verdicts (one char per event: a accepted, d duplicate, l late, o overflow),
--           window members oldest first joined by "\n" (JSON escapes every newline),
--           HGETALL aggregates as one JSON array, SCARD products, SCARD categories }
--   (strings, not nested replies: each reply element costs the Python client far more
--   than the server does)
--
-- Numbers: times and cents arrive as decimal strings and are written back as those same
-- strings or through HINCRBY with %d, never through Lua's %.14g number formatting.

local W, S, A, P, C = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_events = tonumber(ARGV[1])
local gap_ms = ARGV[2]
local gap = tonumber(gap_ms)
local max_seen = tonumber(ARGV[3])

-- Byte-wise a < b. Lua's own string "<" follows the server's locale collation.
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local agg = redis.call('HMGET', A, 'n', 'first', 'last', 'pmax', 'uidt', 'uidk')
local s = {
  n = tonumber(agg[1]) or 0,
  first = tonumber(agg[2]), first_s = agg[2],
  last = tonumber(agg[3]), last_s = agg[3],
  pmax = tonumber(agg[4]) or 0, pmax_s = false,
  uidt = tonumber(agg[5]), uidt_s = false, uidk = agg[6], uid = false,
  n_seen = redis.call('SCARD', S),
  added = 0, cart = 0, psum = 0, pcnt = 0, counts = {},
}

local function verdict_for(id, t)
  if redis.call('SISMEMBER', S, id) == 1 then
    return 'd'
  end
  if s.n > 0 and t < s.last - gap then
    return 'l'
  end
  if s.n_seen >= max_seen then
    return 'o'
  end
  return 'a'
end

local function add_times(t, ts)
  if s.n == 0 or t < s.first then
    s.first, s.first_s = t, ts
  end
  if s.n == 0 or t > s.last then
    s.last, s.last_s = t, ts
  end
  s.n = s.n + 1
  s.added = s.added + 1
end

local function add_price(etype, cents_s)
  if cents_s == '' then
    return
  end
  local cents = tonumber(cents_s)
  s.psum = s.psum + cents
  s.pcnt = s.pcnt + 1
  if cents > s.pmax then
    s.pmax, s.pmax_s = cents, cents_s
  end
  if etype == 'cart' then
    s.cart = s.cart + cents
  elseif etype == 'remove_from_cart' then
    s.cart = s.cart - cents
  end
end

local function add_user(user, t, ts, hex)
  if user == '' then
    return
  end
  if s.uidt == nil or t > s.uidt or (t == s.uidt and bytes_less(s.uidk, hex)) then
    s.uidt, s.uidt_s, s.uidk, s.uid = t, ts, hex, user
  end
end

local function accept(id, hex, ts, t, etype, user, product, category, cents_s, json)
  redis.call('SADD', S, id)
  s.n_seen = s.n_seen + 1
  redis.call('ZADD', W, ts, hex .. ' ' .. json)
  add_times(t, ts)
  s.counts[etype] = (s.counts[etype] or 0) + 1
  add_price(etype, cents_s)
  if product ~= '' then
    redis.call('SADD', P, product)
  end
  if category ~= '' then
    redis.call('SADD', C, category)
  end
  add_user(user, t, ts, hex)
end

local function write_tallies()
  redis.call('HINCRBY', A, 'n', string.format('%d', s.added))
  redis.call('HSET', A, 'first', s.first_s, 'last', s.last_s)
  redis.call('HINCRBY', A, 'cart', string.format('%d', s.cart))
  redis.call('HINCRBY', A, 'psum', string.format('%d', s.psum))
  redis.call('HINCRBY', A, 'pcnt', string.format('%d', s.pcnt))
  for etype, count in pairs(s.counts) do
    redis.call('HINCRBY', A, 'c:' .. etype, string.format('%d', count))
  end
  if s.pmax_s then
    redis.call('HSET', A, 'pmax', s.pmax_s)
  end
  if s.uid then
    redis.call('HSET', A, 'uid', s.uid, 'uidt', s.uidt_s, 'uidk', s.uidk)
  end
  -- Keep the newest max_events members (ranks are ascending by score, then member).
  redis.call('ZREMRANGEBYRANK', W, 0, string.format('%d', -max_events - 1))
  -- The TTL goes on every key after every write, so no part of a session outlives its gap.
  for i = 1, #KEYS do
    redis.call('PEXPIRE', KEYS[i], gap_ms)
  end
end

local verdicts = {}
for _, fields in ipairs(cjson.decode(ARGV[4])) do
  local id, hex, ts, etype, user, product, category, cents_s, json = unpack(fields, 1, 9)
  local t = tonumber(ts)
  local verdict = verdict_for(id, t)
  if verdict == 'a' then
    accept(id, hex, ts, t, etype, user, product, category, cents_s, json)
  end
  verdicts[#verdicts + 1] = verdict
end
if s.added > 0 then
  write_tallies()
end

local flat = redis.call('HGETALL', A)
return {
  table.concat(verdicts),
  table.concat(redis.call('ZRANGE', W, 0, -1), '\n'),
  #flat > 0 and cjson.encode(flat) or '[]',
  redis.call('SCARD', P),
  redis.call('SCARD', C),
}
