-- wrk script: the same request again and again on each connection, timed per request.
--
--   wrk -t N -c N -d 10s -s timed.lua URL -- method=POST body=FILE
--
-- Headers (Authorization, x-goog-api-key, Content-Type) come from wrk's -H flags.
-- Run with as many threads as connections: each thread's Lua state then drives exactly one
-- connection and the gap between two request() calls is one request's latency (see common.lua).
-- Used for every b64_json / Gemini JSON case and for the streamed chat case (the latency of an
-- SSE reply is the time until its last byte, `data: [DONE]`).

local script_dir = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
local common = dofile(script_dir .. "/common.lua")

local threads = {}
function setup(thread)
   table.insert(threads, thread)
end

local req
local calls, last = 0, nil
lat_us = {} -- global so done() can read it through thread:get

function init(args)
   local options = common.parse_args(args)
   local body = options.body and common.read_file(options.body) or nil
   req = wrk.format(options.method or (body and "POST" or "GET"), nil, nil, body)
end

function request()
   local now = common.now_us()
   calls = calls + 1
   -- wrk calls request() once before the run to check the request (on the first thread only),
   -- and the first real request includes connecting; skip the first interval on every thread.
   if calls >= 3 then lat_us[#lat_us + 1] = now - last end
   last = now
   return req
end

function done(summary, latency, requests)
   common.report(threads, summary, latency)
end
