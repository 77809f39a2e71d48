-- A Cloudflare 429 seen by one sidecar cools the credential down for the whole fleet: the key lives
-- until Retry-After. A longer wait extends it; a shorter one never shortens it. It must not touch
-- any key but the cool-down's.
--
-- KEYS[1] the cool-down; ARGV[1] the wait in milliseconds (at least 1).
-- Returns the cool-down now in force, in milliseconds.

local wanted = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
-- No key (-2) or one without an expiry (-1, not written by a sidecar) is replaced.
if left < wanted then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return wanted
end
return left
