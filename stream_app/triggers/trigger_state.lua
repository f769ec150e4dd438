-- trigger_state.lua: atomic check-and-set of one (rule, session) trigger state.
--
-- The Redis twin of stream_app.triggers.state.InMemoryTriggerState._commit_one; the pure
-- transition itself is computed in Python (stream_app.triggers.evaluate.step).
-- KEYS (one hash tag per rule, so one Cluster slot):
--   1 state     STRING  the rule state JSON for the session
--   2 cooldown  STRING  present while the user is in the rule's cooldown
--   3 rate      STRING  fires of the rule in the current rate window
-- ARGV: 1 expected state ('' = no state), 2 state if fired ('' = no fire wanted),
--   3 state if not fired, 4 state TTL ms, 5 cooldown ms ('0' = none),
--   6 rate max ('0' = none), 7 rate window ms
-- Returns: 'conflict' | 'saved' | 'cooldown' | 'rate_limited' | 'fired'
-- Every key written gets a TTL.

local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return 'conflict'
end
local decision, new_state = 'saved', ARGV[3]
if ARGV[2] ~= '' then
  local cooldown_ms = tonumber(ARGV[5])
  local rate_max = tonumber(ARGV[6])
  if cooldown_ms > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    decision = 'cooldown'
  elseif rate_max > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= rate_max then
    decision = 'rate_limited'
  else
    decision, new_state = 'fired', ARGV[2]
    if cooldown_ms > 0 then
      redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
    end
    if rate_max > 0 then
      redis.call('INCR', KEYS[3])
      redis.call('PEXPIRE', KEYS[3], ARGV[7])
    end
  end
end
redis.call('SET', KEYS[1], new_state, 'PX', ARGV[4])
return decision
