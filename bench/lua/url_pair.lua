-- wrk script for response_format "url": POST /v1/images/generations, then GET the image URL it
-- returned, on the same connection; the pair is the unit of work that is timed and counted.
--
--   wrk -t N -c N -d 10s -s url_pair.lua URL -- body=FILE
--
-- One connection per thread (threads = connections), so the POST/GET alternation and the pair
-- timing are per connection. A pair's latency is the gap between two consecutive POSTs being
-- issued (POST latency + GET latency + microseconds of Lua), recorded only when both halves
-- answered 200. This script needs a response() callback to read the URL, so wrk copies every
-- response body into Lua, the PNG of the GET included: a client-side memcpy the b64_json cases
-- do not pay (about 2 MB per 1K pair, 30 MB per 4K pair).

local script_dir = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
local common = dofile(script_dir .. "/common.lua")

local threads = {}
function setup(thread)
   table.insert(threads, thread)
end

local post_request
local pending_path = nil  -- the image to GET next, set by the POST's response
local inflight = nil      -- "post" or "get": what the connection is waiting for
local pair_started = nil  -- when the current pair's POST was issued
local pair_ok = false     -- both halves of the current pair answered 200

lat_us = {}               -- pair latencies (globals are read by done() through thread:get)
pairs_done = 0
failures = 0
post_body_bytes_max = 0
get_body_bytes_total = 0

function init(args)
   local options = common.parse_args(args)
   post_request = wrk.format("POST", nil, nil, common.read_file(options.body))
end

function request()
   if pending_path then
      local path = pending_path
      pending_path = nil
      inflight = "get"
      -- No Authorization or Content-Type: image URLs are signed, not authenticated.
      return wrk.format("GET", path, {}, nil)
   end
   local now = common.now_us()
   if pair_started and pair_ok then lat_us[#lat_us + 1] = now - pair_started end
   pair_started = now
   pair_ok = false
   inflight = "post"
   return post_request
end

function response(status, headers, body)
   if inflight == "post" then
      if #body > post_body_bytes_max then post_body_bytes_max = #body end
      local url = status == 200 and body:match('"url"%s*:%s*"([^"]+)"') or nil
      if url then
         url = url:gsub("\\/", "/"):gsub("\\u0026", "&")
         pending_path = url:match("^https?://[^/]+(/.*)$") or url
      else
         failures = failures + 1
      end
   elseif inflight == "get" then
      if status == 200 and #body > 0 then
         pair_ok = true
         pairs_done = pairs_done + 1
         get_body_bytes_total = get_body_bytes_total + #body
      else
         failures = failures + 1
      end
   end
end

function done(summary, latency, requests)
   common.report(threads, summary, latency, { "pairs_done", "failures", "post_body_bytes_max", "get_body_bytes_total" })
end
