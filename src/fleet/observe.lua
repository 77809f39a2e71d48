-- Shares the count Cloudflare's Ratelimit header gave one sidecar with the whole fleet. Within a
-- window the lower count wins, because answers arrive out of order and the fleet may have spent
-- calls since; the reset comes from the newest reading, and the key expires with it. It must not
-- touch any key but the count's; an unreadable count is replaced, never an error.
--
-- KEYS[1] Cloudflare's count (hash: remaining, quota); ARGV[1] remaining, ARGV[2] quota, ARGV[3]
-- the time to the window's reset in milliseconds (at least 1).
-- Returns the count now shared.

local remaining = tonumber(ARGV[1])
local held = redis.pcall('HGET', KEYS[1], 'remaining')
if not (type(held) == 'table' and held.err) then
  local old = tonumber(held)
  if old ~= nil and old == old and old >= 0 and old < remaining and redis.call('PTTL', KEYS[1]) > 0 then
    remaining = old
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'remaining', string.format('%.0f', remaining), 'quota', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return remaining
