-- Prints one machine-readable line at the end of a wrk run (bench/run.sh parses it).
-- Latencies are in microseconds; errors are socket errors (connect, read, write, timeout);
-- non2xx counts responses with a status above 399, as wrk does.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
