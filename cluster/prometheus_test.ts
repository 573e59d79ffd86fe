import assert from "node:assert/strict";
import { parseMetrics } from "../tests/_prometheus.ts";
import { escapeLabelValue, Exposition, formatNumber, Histogram } from "./prometheus.ts";

Deno.test("the exposition writes HELP and TYPE once per family, then its samples, one per line", () => {
  const text = new Exposition()
    .counter("demo_requests_total", "Requests served.", [[{ code: "200" }, 3], [{ code: "500" }, 1]])
    .gauge("demo_up", "1 while up.", 1)
    .text();
  assert.equal(
    text,
    [
      "# HELP demo_requests_total Requests served.",
      "# TYPE demo_requests_total counter",
      'demo_requests_total{code="200"} 3',
      'demo_requests_total{code="500"} 1',
      "# HELP demo_up 1 while up.",
      "# TYPE demo_up gauge",
      "demo_up 1",
      "",
    ].join("\n"),
  );
});

Deno.test("label values escape backslash, double quote and newline; HELP escapes backslash and newline", () => {
  const nasty = 'a\\b"c\nd';
  assert.equal(escapeLabelValue(nasty), 'a\\\\b\\"c\\nd');
  const text = new Exposition().gauge("demo_info", 'Says "hi"\\n and\nmore.', [[{ v: nasty }, 1]]).text();
  assert.equal(text.split("\n")[0], '# HELP demo_info Says "hi"\\\\n and\\nmore.');
  assert.equal(text.split("\n")[2], 'demo_info{v="a\\\\b\\"c\\nd"} 1');
  assert.deepEqual(parseMetrics(text)[0]?.labels, { v: nasty }, "the escaped value reads back as written");
});

Deno.test('a histogram writes cumulative buckets ending at le="+Inf", then _sum and _count', () => {
  const histogram = new Histogram([0.001, 0.01, 0.1]);
  for (const value of [0.0005, 0.001, 0.002, 0.05, 0.05, 3]) histogram.observe(value);
  const text = new Exposition().histogram("demo_seconds", "Time.", [[{ service: "web" }, histogram]]).text();
  assert.equal(
    text,
    [
      "# HELP demo_seconds Time.",
      "# TYPE demo_seconds histogram",
      'demo_seconds_bucket{service="web",le="0.001"} 2',
      'demo_seconds_bucket{service="web",le="0.01"} 3',
      'demo_seconds_bucket{service="web",le="0.1"} 5',
      'demo_seconds_bucket{service="web",le="+Inf"} 6',
      'demo_seconds_sum{service="web"} 3.1035',
      'demo_seconds_count{service="web"} 6',
      "",
    ].join("\n"),
  );
});

Deno.test("numbers are written as Prometheus reads them: NaN, +Inf, -Inf, exponents", () => {
  assert.equal(formatNumber(NaN), "NaN");
  assert.equal(formatNumber(Infinity), "+Inf");
  assert.equal(formatNumber(-Infinity), "-Inf");
  assert.equal(formatNumber(0.00001), "0.00001");
  assert.equal(formatNumber(1e-7), "1e-7");
  assert.equal(formatNumber(42), "42");
});

Deno.test("the exposition refuses bad names, reserved labels, counters without _total and a family twice", () => {
  assert.throws(() => new Exposition().gauge("2bad", "x", 1), TypeError);
  assert.throws(() => new Exposition().gauge("ok", "x", [[{ "bad-label": "v" }, 1]]), TypeError);
  assert.throws(() => new Exposition().gauge("ok", "x", [[{ __name: "v" }, 1]]), TypeError);
  assert.throws(() => new Exposition().counter("demo_requests", "x", 1), /ends in _total/);
  assert.throws(() => new Exposition().gauge("demo", "x", 1).gauge("demo", "x", 2), /twice/);
  assert.throws(
    () => new Exposition().histogram("demo_seconds", "x", [[{ le: "1" }, new Histogram([1])]]),
    /reserved/,
  );
  assert.throws(() => new Histogram([0.1, 0.1]), RangeError);
  assert.throws(() => new Histogram([1, Infinity]), RangeError);
});
