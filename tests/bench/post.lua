-- wrk script for the request-path benchmark (see README.md): one 200-byte
-- JSON-RPC tools/call POST with the headers an MCP client sends, the same
-- request for every target. The bearer comes from BENCH_TOKEN.
--
-- done() prints one line "BENCH_JSON {...}" with exact counts and latency
-- percentiles in microseconds, so nothing has to parse wrk's human output.

local token = os.getenv("BENCH_TOKEN") or ""
local prefix = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"'
local suffix = '"}}}'
local body = prefix .. string.rep("x", 200 - #prefix - #suffix) .. suffix
assert(#body == 200, "the body must be 200 bytes")

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
wrk.headers["Authorization"] = "Bearer " .. token

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
