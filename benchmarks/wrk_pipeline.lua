-- wrk script for benchmarks.pipeline --wrk: each thread posts exactly `quota` NEW generic-hook
-- events (X-Hook-Token; event ids and phones from the thread's number and a counter), then a
-- GET /healthz per connection and second until the benchmark stops wrk (SIGINT) once Redis holds
-- every event.
-- Arguments after `--`: the hook token, the quota per thread.
-- done() prints one `wrk-summary` line that the benchmark parses.

local threads = {}
local next_thread = 1

function setup(thread)
  thread:set("thread_number", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  quota = tonumber(args[2])
  sent, refused = 0, 0
  headers = {["Content-Type"] = "application/json", ["X-Hook-Token"] = args[1]}
end

function request()
  if sent >= quota then
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  local number = string.format("%d%06d", thread_number, sent)
  local body = string.format(
    '{"event":"deal.stage_changed","event_id":"bench-%s","deal__id":"%s",'
    .. '"contact__first_name":"Lead","contact__phone":"+1415%s"}', number, number, number)
  return wrk.format("POST", "/webhooks/generic/bench", headers, body)
end

function delay()
  if sent >= quota then
    return 1000  -- every event is out: idle along (fillers) until the benchmark stops wrk
  end
  return 0
end

function response(status, headers, body)
  if status ~= 200 then
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local sent_total, refused_total = 0, 0
  for _, thread in ipairs(threads) do
    sent_total = sent_total + thread:get("sent")
    refused_total = refused_total + thread:get("refused")
  end
  io.write(string.format("wrk-summary sent=%d refused=%d requests=%d seconds=%.3f\n",
    sent_total, refused_total, summary.requests, summary.duration / 1e6))
end
