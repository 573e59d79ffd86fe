import assert from "node:assert/strict";
import { formatTable, median, type Row } from "./_table.ts";

const HAPROXY: Row = {
  label: "HAProxy",
  keepAliveRps: 40_000,
  p50Ms: 1,
  p99Ms: 4,
  newConnectionsPerSecond: 8_000,
  bulkGbitPerSecond: 6,
  redisRps: 500_000,
  kibPerIdleConnection: 3.3,
};

Deno.test("formatTable puts each figure beside its ratio to the baseline's", () => {
  const switchyard: Row = {
    label: "switchyard",
    keepAliveRps: 20_000,
    p50Ms: 0.25,
    p99Ms: 12.4,
    newConnectionsPerSecond: 4_000,
    bulkGbitPerSecond: 3,
    redisRps: 450_000,
    kibPerIdleConnection: 33,
  };
  const lines = formatTable([HAPROXY, switchyard], HAPROXY).split("\n");
  assert.equal(lines.length, 4);
  assert.match(lines[0] as string, /^\| target \| keep-alive req\/s \| × HAProxy \| p50 ms \|/);
  assert.equal(
    lines[3],
    "| switchyard | 20,000 | 0.50× | 0.250 | 0.25× | 12.4 | 3.10× | 4,000 | 0.50× | 3.00 | 0.50× | 450,000 | 0.90× | 33.0 | 10.00× |",
  );
});

Deno.test("formatTable shows a dash where a figure or the baseline's is missing", () => {
  const partial: Row = { ...HAPROXY, label: "direct", kibPerIdleConnection: null, bulkGbitPerSecond: null };
  const noBaseline = formatTable([partial], null).split("\n")[2] as string;
  assert.equal(
    noBaseline,
    "| direct | 40,000 | — | 1.00 | — | 4.00 | — | 8,000 | — | — | — | 500,000 | — | — | — |",
  );
});

Deno.test("median: the middle value, the mean of the middle two, null for none", () => {
  assert.equal(median([]), null);
  assert.equal(median([7]), 7);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([5, 5, 1]), 5);
});

Deno.test("formatTable takes a row's own ratios where it has them, and divides for the other columns", () => {
  const paired: Row = {
    ...HAPROXY,
    label: "paired",
    newConnectionsPerSecond: 6_000,
    ratios: { newConnectionsPerSecond: 0.9, p99Ms: null },
  };
  const line = formatTable([HAPROXY, paired], HAPROXY).split("\n")[3] as string;
  // 6,000 against 8,000 would read 0.75×; measured beside HAProxy run by run, it was 0.90×.
  assert.equal(
    line,
    "| paired | 40,000 | 1.00× | 1.00 | 1.00× | 4.00 | — | 6,000 | 0.90× | 6.00 | 1.00× | 500,000 | 1.00× | 3.3 | 1.00× |",
  );
  const noBaseline = formatTable([paired], null).split("\n")[2] as string;
  assert.match(noBaseline, /\| 6,000 \| — \|/);
});

Deno.test("formatTable gives redis-benchmark's set/get rate its paired ratio, and a dash without it", () => {
  const header = formatTable([HAPROXY], HAPROXY).split("\n")[0] as string;
  assert.match(
    header,
    /\| bulk Gbit\/s \| × HAProxy \| redis -P16 set\/get req\/s \| × HAProxy \| KiB\/idle conn \|/,
  );
  const paired: Row = { ...HAPROXY, label: "paired", redisRps: 520_000, ratios: { redisRps: 1.12 } };
  // 520,000 against 500,000 would read 1.04×; measured beside HAProxy run by run, it was 1.12×.
  assert.match(
    formatTable([HAPROXY, paired], HAPROXY).split("\n")[3] as string,
    /\| 520,000 \| 1\.12× \| 3\.3 \|/,
  );
  // redis-server or redis-benchmark missing: no figure, no ratio, for the baseline too.
  const without = { ...HAPROXY, redisRps: null };
  const lines = formatTable([without, { ...without, label: "other" }], without).split("\n");
  assert.match(lines[2] as string, /\| 6\.00 \| 1\.00× \| — \| — \| 3\.3 \|/);
  assert.match(lines[3] as string, /\| 6\.00 \| 1\.00× \| — \| — \| 3\.3 \|/);
});
