-- wrk script: walk the file set.
-- args: mode nfiles salt stride
--   hit    : /files/f<i>.txt cycling over all files (cached after the cold pass)
--   known  : /files/f<i>.txt?k=<salt>-<n>, every request a new cache key,
--            owners already known
--   direct : only the files of backend 0 (every <stride>-th), for nginx itself
--   hot    : one key, /hot/key.txt (max-age=2 s, on the last backend)
local mode, nfiles, salt, stride = "hit", 10000, "s", 1
local i = 0

function init(args)
  mode = args[1] or mode
  nfiles = tonumber(args[2] or nfiles)
  salt = args[3] or salt
  stride = tonumber(args[4] or stride)
end

function request()
  local n = i
  i = i + 1
  if mode == "known" then
    return wrk.format("GET", "/files/f" .. (n % nfiles) .. ".txt?k=" .. salt .. "-" .. n)
  elseif mode == "hot" then
    return wrk.format("GET", "/hot/key.txt")
  elseif mode == "direct" then
    return wrk.format("GET", "/files/f" .. ((n * stride) % nfiles) .. ".txt")
  end
  return wrk.format("GET", "/files/f" .. (n % nfiles) .. ".txt")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
