import assert from "node:assert/strict";
import {
  parseIperf,
  parseRedisBenchmark,
  parseWrk,
  REDIS_MIN_REQUESTS,
  redisMean,
  redisRequests,
} from "./_load.ts";

const WRK_REPORT = `Running 10s test @ http://127.0.0.1:41234/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.25ms  410.11us  12.03ms   88.12%
    Req/Sec    33.35k     1.20k   35.12k    71.00%
  Latency Distribution
     50%  696.00us
     75%    1.40ms
     90%    1.71ms
     99%    3.55ms
  333512 requests in 10.00s, 54.71MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  33351.18
Transfer/sec:      5.47MB
`;

Deno.test("parseWrk reads requests/s, latency percentiles in ms and every error", () => {
  const result = parseWrk(WRK_REPORT);
  assert.equal(result.requestsPerSecond, 33351.18);
  assert.equal(result.requests, 333512);
  assert.equal(result.p50Ms, 0.696);
  assert.equal(result.p99Ms, 3.55);
  assert.equal(result.errors, 10);
  assert.equal(
    result.errorText,
    "socket errors: connect 0, read 3, write 1, timeout 2; 4 non-2xx/3xx answers",
  );
});

Deno.test("parseWrk reads a clean report as no errors, and seconds as milliseconds", () => {
  const clean = WRK_REPORT.replace(/ {2}Socket errors.*\n/, "").replace(/ {2}Non-2xx.*\n/, "")
    .replace("3.55ms", "1.20s");
  const result = parseWrk(clean);
  assert.equal(result.errors, 0);
  assert.equal(result.errorText, "");
  assert.equal(result.p99Ms, 1200);
});

Deno.test("parseWrk refuses output without a requests/s line", () => {
  assert.throws(() => parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n"), /Requests\/sec/);
});

Deno.test("parseIperf reads the received rate in Gbit/s and passes iperf3's error on", () => {
  const report = JSON.stringify({ end: { sum_received: { bits_per_second: 6.19e9 } } });
  assert.equal(parseIperf(report).gbitPerSecond, 6.19);
  assert.throws(
    () => parseIperf(JSON.stringify({ end: {}, error: "unable to connect to server: Connection refused" })),
    /unable to connect to server/,
  );
  assert.throws(() => parseIperf("not json"), /Cannot read iperf3's report/);
});

// redis-benchmark 7.0's -q output: progress lines ended by "\r", then one final line per test.
const REDIS_REPORT = " \rSET: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r" +
  "                                        \rSET: 475059.38 requests per second, p50=1.111 msec\n" +
  " \rGET: rps=193216.0 (overall: 155257.7) avg_msec=3.689 (overall: 4.300)\r" +
  "                                        \rGET: 261096.61 requests per second, p50=1.367 msec\n\n";

Deno.test("parseRedisBenchmark reads the final SET and GET rates, not the progress lines", () => {
  const result = parseRedisBenchmark(REDIS_REPORT);
  assert.equal(result.setPerSecond, 475059.38);
  assert.equal(result.getPerSecond, 261096.61);
  assert.equal(redisMean(result), (475059.38 + 261096.61) / 2);
  // Older versions end the line after the rate.
  assert.equal(
    parseRedisBenchmark("SET: 1000.00 requests per second\nGET: 3000.50 requests per second\n")
      .getPerSecond,
    3000.5,
  );
});

Deno.test("parseRedisBenchmark names the tool's own error when a test has no result", () => {
  const broken = REDIS_REPORT.slice(0, REDIS_REPORT.indexOf(" \rGET")) +
    " \rGET: rps=38012.7 (overall: 86492.8) avg_msec=6.772 (overall: 6.772)\r" +
    "Error: Server closed the connection\n";
  assert.throws(
    () => parseRedisBenchmark(broken),
    /no GET result in: .*Error: Server closed the connection$/,
  );
  assert.throws(() => parseRedisBenchmark(""), /no SET result in: \(no output\)/);
});

Deno.test("redisRequests sizes each test so that SET and GET together last the given seconds", () => {
  assert.equal(redisRequests(400_000, 5), 1_000_000);
  assert.equal(redisRequests(123_456, 3), 185_000);
  assert.equal(redisRequests(1_000, 5), REDIS_MIN_REQUESTS);
  assert.equal(redisRequests(0, 5), REDIS_MIN_REQUESTS);
});
