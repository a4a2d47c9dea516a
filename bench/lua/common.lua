-- Shared helpers for the NanoGate benchmark's wrk scripts (loaded with dofile by each script).
--
-- Why the scripts time requests themselves: wrk 4.x "corrects" its latency histogram for
-- coordinated omission by adding synthetic samples for every request slower than twice the mean
-- (stats_correct in wrk's stats.c). That is right for open-loop tests but inflates p99 of a
-- closed-loop test like this one, and latency.count no longer equals the number of requests.
-- So each script runs one connection per wrk thread and notes a monotonic timestamp every time
-- wrk asks it for the next request: on a keep-alive connection wrk asks for request i+1 right
-- after response i is complete, so the gap between two calls is the latency of request i (plus
-- a few microseconds of Lua). No `response()` callback is needed for that, so wrk does not copy
-- response bodies into Lua (which matters for 30-40 MB 4K answers).

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } ngbench_timespec;
int clock_gettime(int clk_id, ngbench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("ngbench_timespec")

local M = {}

-- Monotonic time in microseconds.
function M.now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

-- Script arguments come as key=value words after the URL (`wrk ... URL -- body=FILE`).
-- wrk passes the URL itself as args[0]; anything without '=' is ignored.
function M.parse_args(args)
   local options = {}
   for i = 0, #args do
      local word = args[i]
      if word then
         local key, value = word:match("^([%w_]+)=(.*)$")
         if key then options[key] = value end
      end
   end
   return options
end

function M.read_file(path)
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   return data
end

-- A minimal JSON encoder for the report (numbers, strings, booleans, arrays, objects).
function M.json(value)
   local kind = type(value)
   if kind == "number" then
      if value ~= value or value == math.huge or value == -math.huge then return "null" end
      if value == math.floor(value) and math.abs(value) < 2^53 then return string.format("%d", value) end
      return string.format("%.3f", value)
   elseif kind == "string" then
      return '"' .. value:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
   elseif kind == "boolean" then
      return tostring(value)
   elseif kind == "table" then
      local parts = {}
      if #value > 0 or next(value) == nil then
         for i = 1, #value do parts[i] = M.json(value[i]) end
         return "[" .. table.concat(parts, ",") .. "]"
      end
      for k, v in pairs(value) do parts[#parts + 1] = M.json(tostring(k)) .. ":" .. M.json(v) end
      return "{" .. table.concat(parts, ",") .. "}"
   end
   return "null"
end

-- Prints one line `NGBENCH {json}` for bench.py: wrk's own totals and error counts, wrk's
-- (corrected) percentiles for reference, and every latency the threads recorded themselves.
-- `extra_names` are further per-thread globals (numbers) to add up over the threads, e.g. pair
-- counts; names ending in `_max` take the largest value instead.
function M.report(threads, summary, latency, extra_names)
   local samples = {}
   local extra = {}
   for _, name in ipairs(extra_names or {}) do extra[name] = 0 end
   for _, thread in ipairs(threads) do
      local recorded = thread:get("lat_us") or {}
      for i = 1, #recorded do samples[#samples + 1] = recorded[i] end
      for _, name in ipairs(extra_names or {}) do
         local value = tonumber(thread:get(name)) or 0
         if name:match("_max$") then
            extra[name] = math.max(extra[name], value)
         else
            extra[name] = extra[name] + value
         end
      end
   end
   local report = {
      requests = summary.requests,
      duration_us = summary.duration,
      bytes = summary.bytes,
      errors = summary.errors,
      wrk_p50_us = latency:percentile(50),
      wrk_p99_us = latency:percentile(99),
      extra = extra,
      lat_us = samples,
   }
   io.write("NGBENCH ", M.json(report), "\n")
end

return M
