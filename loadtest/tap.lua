-- wrk script: taps codes drawn from a file, uniformly or Zipf-distributed, with a fixed seed.
-- Environment: LG_CODES (file, one code per line), LG_DIST (uniform|zipf), LG_SEED (integer),
-- LG_SYNTHETIC (token for X-Linkgate-Synthetic, optional), LG_UA (User-Agent).
local codes = {}
counts = {}
local threads = {}
local dist = os.getenv("LG_DIST") or "uniform"
local seed = tonumber(os.getenv("LG_SEED") or "42")
local synthetic = os.getenv("LG_SYNTHETIC")
local ua = os.getenv("LG_UA") or "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("LG_CODES") or "codes.txt") do
    if #line > 0 then codes[#codes + 1] = line end
  end
  if #codes == 0 then error("no codes in LG_CODES") end
  math.randomseed(seed * 1000 + id)
  counts = { ["3xx"] = 0, ["4xx"] = 0, other = 0 }
  wrk.headers["User-Agent"] = ua
  if synthetic and #synthetic > 0 then wrk.headers["X-Linkgate-Synthetic"] = synthetic end
end

local lnN = nil
local function pick()
  local n = #codes
  if dist == "zipf" then
    -- Zipf (s = 1) by inverse CDF: P(rank <= k) = ln k / ln n.
    lnN = lnN or math.log(n)
    local rank = math.floor(math.exp(math.random() * lnN))
    if rank < 1 then rank = 1 elseif rank > n then rank = n end
    return codes[rank]
  end
  return codes[math.random(1, n)]
end

function request()
  return wrk.format("GET", "/" .. pick())
end

function response(status, headers, body)
  if status >= 300 and status < 400 then counts["3xx"] = counts["3xx"] + 1
  elseif status >= 400 and status < 500 then counts["4xx"] = counts["4xx"] + 1
  else counts.other = counts.other + 1 end
end

function done(summary, latency, requests)
  local c3, c4, co = 0, 0, 0
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    c3 = c3 + c["3xx"]; c4 = c4 + c["4xx"]; co = co + c.other
  end
  io.write(string.format("RESULT requests=%d rps=%.0f p50_us=%d p99_us=%d p999_us=%d status_3xx=%d status_4xx=%d status_other=%d errors=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    -- errors: connection-level failures only (wrk also counts 4xx/5xx answers as errors; those are
    -- in the status counts).
    c3, c4, co, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
