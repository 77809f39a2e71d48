-- The fleet's admission of one upstream call by one credential, atomic in Redis: the cool-down a
-- Cloudflare 429 set, Cloudflare's own count (the stricter of it and our bucket wins), then our
-- bucket as a GCRA on Redis TIME, so that host clocks do not matter. Every key it writes carries an
-- expiry, so Redis holds nothing forever; a key holding something it cannot read is dropped and
-- counts as absent, never as an error. It must not call anything but Redis commands on its own keys.
--
-- KEYS[1] cool-down (any value, its PTTL is the wait), KEYS[2] Cloudflare's count (hash:
-- remaining, quota; its PTTL is the time to the window's reset), KEYS[3] our bucket (hash: the
-- theoretical arrival times `all` and `refresh`, in microseconds of Redis TIME).
-- ARGV[1] interval of the whole bucket in microseconds, ARGV[2] its burst, ARGV[3] interval of the
-- refreshes' share (0: refreshes never call), ARGV[4] its burst, ARGV[5] the reserve of Cloudflare's
-- count for this work in thousandths, ARGV[6] "refresh" or "caller", ARGV[7] the policy's period in
-- microseconds (the wait of a refresh that may never call).
-- Returns {outcome, wait in microseconds, tokens left}; outcome 0 granted, 1 cooling down,
-- 2 at the reserve, 3 exhausted.

-- Effects replication, so that reading TIME before writing is allowed on Redis older than 5.
if redis.replicate_commands then
  redis.replicate_commands()
end

local function drop_unreadable(key)
  redis.call('DEL', key)
end

-- Integers up to 2^53 are exact in Lua's doubles; this prints them without an exponent.
local function whole(number)
  return string.format('%.0f', number)
end

local cooling = redis.call('PTTL', KEYS[1])
if cooling > 0 then
  return {1, cooling * 1000, 0}
elseif cooling == -1 then
  -- A cool-down without an expiry was not written by a sidecar; nothing is kept forever.
  drop_unreadable(KEYS[1])
end

local interval_all = tonumber(ARGV[1])
local burst_all = tonumber(ARGV[2])
local interval_refresh = tonumber(ARGV[3])
local burst_refresh = tonumber(ARGV[4])
local reserve_per_mille = tonumber(ARGV[5])
local is_refresh = ARGV[6] == 'refresh'
local period = tonumber(ARGV[7])

-- Cloudflare's count first: a credential held at its reserve spends no token of our bucket.
local counted = false
local reading = redis.pcall('HMGET', KEYS[2], 'remaining', 'quota')
if type(reading) == 'table' and reading.err then
  drop_unreadable(KEYS[2])
else
  local remaining = tonumber(reading[1])
  local quota = tonumber(reading[2])
  local resets_in = redis.call('PTTL', KEYS[2])
  if remaining ~= nil and quota ~= nil and remaining == remaining and quota == quota
      and remaining >= 0 and quota >= 0 and resets_in > 0 then
    -- The reserve is rounded up, as Share::of rounds it.
    local reserve = math.floor((quota * reserve_per_mille + 999) / 1000)
    if remaining <= reserve then
      return {2, resets_in * 1000, 0}
    end
    counted = true
  elseif resets_in ~= -2 then
    drop_unreadable(KEYS[2])
  end
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local times = redis.pcall('HMGET', KEYS[3], 'all', 'refresh')
local tat_all, tat_refresh
if (type(times) == 'table' and times.err) or redis.call('PTTL', KEYS[3]) == -1 then
  drop_unreadable(KEYS[3])
else
  tat_all = tonumber(times[1])
  tat_refresh = tonumber(times[2])
end

-- Where a bucket's GCRA starts from now: its stored time, unless that is past (a full bucket),
-- unreadable, or further ahead than the burst allows (garbage, or a bucket of an older, larger
-- policy: a new policy starts full, as the local budget's does).
local function start(tat, interval, burst)
  if tat == nil or tat ~= tat or tat < now or tat > now + interval * burst then
    return now
  end
  return tat
end

local next_refresh = nil
if is_refresh then
  if interval_refresh <= 0 then
    return {3, period, 0}
  end
  next_refresh = start(tat_refresh, interval_refresh, burst_refresh) + interval_refresh
  if next_refresh - now > interval_refresh * burst_refresh then
    return {3, next_refresh - interval_refresh * burst_refresh - now, 0}
  end
end

local next_all = start(tat_all, interval_all, burst_all) + interval_all
if next_all - now > interval_all * burst_all then
  return {3, next_all - interval_all * burst_all - now, 0}
end

-- Granted: both times move on together, and the key lives until the later of them, when the
-- bucket is full again and the key would say nothing.
if next_refresh == nil and interval_refresh > 0 then
  next_refresh = start(tat_refresh, interval_refresh, burst_refresh)
end
local latest = next_all
if next_refresh ~= nil and next_refresh > latest then
  latest = next_refresh
end
redis.call('DEL', KEYS[3])
if next_refresh ~= nil then
  redis.call('HSET', KEYS[3], 'all', whole(next_all), 'refresh', whole(next_refresh))
else
  redis.call('HSET', KEYS[3], 'all', whole(next_all))
end
redis.call('PEXPIRE', KEYS[3], whole(math.ceil((latest - now) / 1000)))

-- The call counts against Cloudflare's count before its answer arrives, so calls admitted together
-- across the fleet cannot overshoot the reserve together.
if counted then
  local spent = redis.pcall('HINCRBY', KEYS[2], 'remaining', -1)
  if type(spent) == 'table' and spent.err then
    drop_unreadable(KEYS[2])
  end
end

return {0, 0, math.floor((interval_all * burst_all - (next_all - now)) / interval_all)}
