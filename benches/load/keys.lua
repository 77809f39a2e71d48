-- Many keys: each request names one of N reference ids (ref-0000000 …), uniformly at random.
-- Arguments after `--`: the path prefix ending in reference_id/, and N. The N requests are
-- formatted once in init(), so the per-request cost in wrk is a table lookup.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local report = require("report")

local requests = {}
local count = 0

function init(args)
   local prefix = args[1]
   count = tonumber(args[2])
   for index = 0, count - 1 do
      requests[index + 1] = wrk.format("GET", string.format("%sref-%07d", prefix, index))
   end
   -- Different threads, different sequences.
   math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16) % 100000)
end

function request()
   return requests[math.random(count)]
end

done = report.done
