-- wrk script: reports conversions by code (POST /v1/conversions), each with an order id of its own.
-- Environment: LG_KEY (API key), LG_CODES (file, one code per line), LG_RUN (a prefix making this
-- run's order ids unique), LG_AMOUNT (minor units, default 659900).
local codes = {}
local threads = {}
local next_id = 0
local n = 0
counts = {}

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
  counts = { created = 0, other = 0 }
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("LG_KEY") or "")
  wrk.headers["Content-Type"] = "application/json"
end

local run = os.getenv("LG_RUN") or "run"
local amount = os.getenv("LG_AMOUNT") or "659900"

function request()
  n = n + 1
  local code = codes[(n + id * 7919) % #codes + 1]
  local body = string.format('{"order_id":"%s-%d-%d","code":"%s","amount":%s,"currency":"CNY"}', run, id, n, code, amount)
  return wrk.format(nil, "/v1/conversions", nil, body)
end

function response(status, headers, body)
  if status == 201 then counts.created = counts.created + 1 else counts.other = counts.other + 1 end
end

function done(summary, latency, requests)
  local created, other = 0, 0
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    created = created + c.created
    other = other + c.other
  end
  io.write(string.format("RESULT created=%d other=%d p50_us=%d p99_us=%d errors=%d\n", created, other,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
