-- wrk script: path-style S3 PutObject load with a unique key per request.
--
--   wrk -t1 -c32 -d15s --timeout 10s -s bench/put.lua http://127.0.0.1:PORT \
--       -- SIZE [LIMIT] [DELAY_MS] [BUCKET] [RUN]
--
-- SIZE      body bytes (pseudo-random, so no server can compress them)
-- LIMIT     stop a thread after this many responses (0: only the -d time bound applies)
-- DELAY_MS  mean pause of each connection between a response and its next request (0: none);
--           drawn uniformly from [DELAY_MS/2, 3*DELAY_MS/2] so connections do not march in
--           step. wrk measures latency from the request's first byte, so pauses are not in it.
-- BUCKET    bucket name (default "bench")
-- RUN       key prefix of this run (default "run"); keys are RUN/t<thread>/<counter>
--
-- done() prints one line "WRK_RESULT <json>" for bench/loadgen.py to parse. When every thread
-- stopped at LIMIT, "limited_us" is the time from the first request to the last thread's stop
-- (monotonic clock via LuaJIT FFI), used instead of wrk's duration (which runs until SIGINT).
-- Unsigned requests: the servers under test run without authentication.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) * 1e6 + tonumber(timespec.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

local counter = 0
local responses = 0
local limit = 0
local delay_ms = 0
local path_prefix = ""
started_us = 0 -- globals, read by done() through thread:get()
stopped_us = 0

local function random_body(size)
   local parts = {}
   for i = 1, size do
      parts[i] = string.char(math.random(0, 255))
   end
   return table.concat(parts)
end

function init(args)
   local size = tonumber(args[1]) or 4096
   limit = tonumber(args[2]) or 0
   delay_ms = tonumber(args[3]) or 0
   local bucket = args[4] or "bench"
   local run = args[5] or "run"
   math.randomseed(1000 + thread_id)
   path_prefix = "/" .. bucket .. "/" .. run .. "/t" .. thread_id .. "/"
   wrk.method = "PUT"
   wrk.body = random_body(size)
   wrk.headers["Content-Type"] = "application/octet-stream"
   -- wrk checks which callbacks exist after init(): define only the ones this run needs,
   -- so an unpaced, unbounded run pays for neither.
   if delay_ms > 0 then
      delay = function()
         return math.random(math.floor(delay_ms / 2), math.ceil(delay_ms * 3 / 2))
      end
   end
   if limit > 0 then
      response = function(status, headers, body)
         responses = responses + 1
         if responses >= limit and stopped_us == 0 then
            stopped_us = now_us()
            wrk.thread:stop()
            -- wrk's main thread sleeps for the whole -d time; this line tells
            -- loadgen.py to end it early with SIGINT (wrk then reports as usual).
            io.write("WRK_THREAD_DONE\n")
            io.flush()
         end
      end
   end
end

function request()
   if counter == 0 then
      started_us = now_us()
   end
   counter = counter + 1
   return wrk.format(nil, path_prefix .. counter)
end

local function field(name, value)
   return string.format('"%s": %s', name, value)
end

local function limited_us()
   local first, last = math.huge, 0
   for _, thread in ipairs(threads) do
      local stopped = thread:get("stopped_us")
      if stopped == 0 then
         return 0 -- some thread ran until the -d time: wrk's duration is right
      end
      first = math.min(first, thread:get("started_us"))
      last = math.max(last, stopped)
   end
   return last - first
end

function done(summary, latency, requests)
   local errors = summary.errors
   local items = {
      field("requests", summary.requests),
      field("duration_us", summary.duration),
      field("limited_us", string.format("%.0f", limited_us())),
      field("bytes", summary.bytes),
      field("errors_connect", errors.connect),
      field("errors_read", errors.read),
      field("errors_write", errors.write),
      field("errors_status", errors.status),
      field("errors_timeout", errors.timeout),
      field("latency_mean_us", latency.mean),
      field("latency_max_us", latency.max),
      field("latency_p50_us", latency:percentile(50)),
      field("latency_p90_us", latency:percentile(90)),
      field("latency_p99_us", latency:percentile(99)),
      field("latency_p999_us", latency:percentile(99.9)),
   }
   io.write("WRK_RESULT {" .. table.concat(items, ", ") .. "}\n")
end
