-- wrk script: each of the <nfiles> files exactly once, never seen before by
-- the proxy (owners unknown), then stop.
local nfiles = 10000
local i, seen = 0, 0

function init(args)
  nfiles = tonumber(args[1] or nfiles)
end

function request()
  local n = i
  i = i + 1
  return wrk.format("GET", "/files/f" .. (n % nfiles) .. ".txt")
end

function response(status, headers, body)
  seen = seen + 1
  if seen >= nfiles then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
