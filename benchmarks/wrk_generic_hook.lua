-- wrk script for benchmarks.ingest_generic: each request is a NEW event (its own event_id and
-- deal id, from the thread's number and a per-thread counter) posted to a token-authenticated
-- generic hook (X-Hook-Token), so the bridge really stores every one (no duplicate short-cut).
-- Arguments after `--`: the hook token, a run id (unique per wrk run), an ISO 8601 timestamp.
-- done() prints one `wrk-summary` line that the benchmark parses.

local threads = {}
local next_thread = 1

function setup(thread)
  thread:set("thread_number", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  run, stamp = args[2], args[3]
  sent = 0
  headers = {["Content-Type"] = "application/json", ["X-Hook-Token"] = args[1]}
end

function request()
  sent = sent + 1
  local number = string.format("%d%09d", thread_number, sent)
  local body = string.format(
    '{"event_id":"%s-%s","type":"deal.stage_changed","timestamp":"%s",'
    .. '"data":{"deal":{"id":"%s","name":"Deal %s","stage":"closedwon","amount":"12500"},'
    .. '"contact":{"id":"%s","email":"lead%s@example.com","first_name":"Lead"}}}',
    run, number, stamp, number, number, number, number)
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local generated = 0
  for _, thread in ipairs(threads) do
    generated = generated + thread:get("sent")
  end
  io.write(string.format(
    "wrk-summary requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d generated=%d\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, generated))
end
