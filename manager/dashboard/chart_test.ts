import assert from "node:assert/strict";
import { anyDouble, check, fc } from "../../tests/_property.ts";
import * as chart from "./chart.ts";
import type { ChartFrame, ChartLayout, ChartSeries } from "./chart.ts";
import { CHART_SOURCE } from "./page.ts";

/** The functions as the page runs them: from the source text it embeds, with nothing of this module around. */
const embedded = new Function(
  `${CHART_SOURCE}\nreturn { ${Object.keys(chart).join(", ")} };`,
)() as typeof chart;

const FRAME: ChartFrame = {
  width: 300,
  height: 120,
  margin: { top: 8, right: 8, bottom: 20, left: 36 },
  windowS: 60,
};
const T0 = 1_700_000_000_000;
/** Samples 5 s apart, the newest at T0 + 5 s × (count − 1). */
const times = (count: number) => Array.from({ length: count }, (_, i) => T0 + 5_000 * i);

/** Every point an SVG path of `linePath` goes through. */
function pointsOf(d: string): Array<[number, number]> {
  return [...d.matchAll(/[ML](-?[\d.e+-]+),(-?[\d.e+-]+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
}

for (const [where, f] of [["", chart], ["embedded: ", embedded]] as const) {
  Deno.test(`${where}nice steps are 1, 2 or 5 times a power of ten, and value ticks start at 0 and reach the largest value`, () => {
    assert.equal(f.niceStep(8, 4), 2);
    assert.equal(f.niceStep(10, 4), 5);
    assert.equal(f.niceStep(0.3, 3), 0.1);
    assert.equal(f.niceStep(4500, 4), 2000);
    assert.equal(f.niceStep(0, 4), 0);
    assert.equal(f.niceStep(NaN, 4), 0);
    assert.deepEqual(f.valueTicks(8, 4), [0, 2, 4, 6, 8]);
    assert.deepEqual(f.valueTicks(7.3, 3), [0, 5, 10]);
    assert.deepEqual(f.valueTicks(0.42, 3), [0, 0.2, 0.4, 0.6000000000000001]);
    assert.deepEqual(f.valueTicks(0, 3), [0, 1], "nothing above 0: the axis still has a height");
    assert.deepEqual(f.valueTicks(-5, 3), [0, 1]);
    assert.deepEqual(f.valueTicks(Number.MAX_VALUE, 3), [0, Number.MAX_VALUE], "no nice step below overflow");
  });

  Deno.test(`${where}tick labels have the decimals their step needs and k or M when it is large`, () => {
    assert.equal(f.formatValue(0, 5), "0");
    assert.equal(f.formatValue(0.25, 0.05), "0.25");
    assert.equal(f.formatValue(0.6000000000000001, 0.2), "0.6");
    assert.equal(f.formatValue(10, 5), "10");
    assert.equal(f.formatValue(1500, 500), "1500");
    assert.equal(f.formatValue(20_000, 5_000), "20k");
    assert.equal(f.formatValue(1_500_000, 500_000), "1.5M");
    assert.equal(f.formatValue(4_000_000, 2_000_000), "4M");
    assert.equal(f.formatValue(1e-320, 1e-320), "0.000", "never more than 3 decimals");
  });

  Deno.test(`${where}time axes reach back a round length, ticks step by round lengths, durations read in s, min or h`, () => {
    assert.deepEqual(f.timeTicks(900, 4), [900, 600, 300, 0]);
    assert.deepEqual(f.timeTicks(900, 2), [600, 0]);
    assert.deepEqual(f.timeTicks(60, 4), [60, 45, 30, 15, 0]);
    assert.deepEqual(f.timeTicks(50, 4), [45, 30, 15, 0]);
    assert.deepEqual(f.timeTicks(86_400, 4), [72_000, 36_000, 0], "past an hour a step: 10 h for a day");
    assert.deepEqual(f.timeTicks(0, 4), [0]);
    assert.equal(f.axisSpan(0, 900), 60, "a minute at least");
    assert.equal(f.axisSpan(75, 900), 120);
    assert.equal(f.axisSpan(145, 900), 300);
    assert.equal(f.axisSpan(895, 900), 900);
    assert.equal(f.axisSpan(2_000, 900), 900, "never more than is kept");
    assert.equal(f.axisSpan(5_000, 86_400), 7_200);
    assert.equal(f.axisSpan(45, 30), 30);
    assert.equal(f.axisSpan(NaN, 900), 60);
    assert.equal(f.formatDuration(30), "30 s");
    assert.equal(f.formatDuration(90), "1.5 min");
    assert.equal(f.formatDuration(900), "15 min");
    assert.equal(f.formatDuration(5_400), "1.5 h");
  });

  Deno.test(`${where}a line path joins runs of points, leaves gaps, and draws a point alone as a dot`, () => {
    assert.equal(f.linePath([]), "");
    assert.equal(f.linePath([null, null]), "");
    assert.equal(f.linePath([[1, 2]]), "M1,2 h0");
    assert.equal(
      f.linePath([[0, 10], [5, 6], null, [9, 1], null, [12, 3], [14, 4]]),
      "M0,10 L5,6 M9,1 h0 M12,3 L14,4",
    );
  });

  Deno.test(`${where}series styles: eight colors, then the same colors dashed, so 24 series all differ`, () => {
    assert.deepEqual(f.seriesStyle(0), { color: "#2f6fde", dash: "" });
    assert.deepEqual(f.seriesStyle(8), { color: "#2f6fde", dash: "6 3" });
    assert.deepEqual(f.seriesStyle(17), { color: "#1f9d55", dash: "2 3" });
    const styles = new Set(Array.from({ length: 24 }, (_, i) => JSON.stringify(f.seriesStyle(i))));
    assert.equal(styles.size, 24);
    assert.deepEqual(f.seriesStyle(-1), f.seriesStyle(0));
    assert.deepEqual(f.seriesStyle(NaN), f.seriesStyle(0));
  });

  Deno.test(`${where}a chart of no sample is empty but has its axes`, () => {
    const layout = f.chartLayout([], [{ name: "a", values: [] }], FRAME);
    assert.equal(layout.empty, true);
    assert.deepEqual(layout.lines, [{ name: "a", d: "", points: 0, last: null, end: null }]);
    assert.deepEqual(layout.yTicks.map((tick) => tick.label), ["0", "1"]);
    assert.deepEqual(layout.xTicks.map((tick) => [tick.label, tick.at, tick.anchor]), [
      ["-1 min", 36, "middle"],
      ["-30 s", 164, "middle"],
      ["now", 292, "end"],
    ]);
  });

  Deno.test(`${where}one sample is a dot at the right edge; values of 0 lie on the axis`, () => {
    const layout = f.chartLayout(
      times(1),
      [{ name: "a", values: [0] }, { name: "b", values: [null] }],
      FRAME,
    );
    assert.equal(layout.empty, false);
    assert.deepEqual(layout.lines, [
      { name: "a", d: "M292,100 h0", points: 1, last: 0, end: [292, 100] },
      { name: "b", d: "", points: 0, last: null, end: null },
    ]);
    assert.deepEqual(layout.yTicks.map((tick) => [tick.label, tick.at]), [["0", 100], ["1", 8]]);
  });

  Deno.test(`${where}samples are placed by their time in the window, scaled to a nice top, with gaps`, () => {
    const series: ChartSeries[] = [
      { name: "a", values: [0, 4, 8, null, 6] },
      { name: "b", values: [1, null, 1, 1, 1] },
    ];
    const layout = f.chartLayout(times(5), series, FRAME);
    // 5 s apart in a 60 s window 256 px wide: 21.3 px apart, the newest at 292; 0 to 8 over 92 px.
    assert.deepEqual(layout.plot, { left: 36, top: 8, right: 292, bottom: 100 });
    assert.deepEqual(layout.yTicks.map((tick) => [tick.label, tick.at]), [
      ["0", 100],
      ["2", 77],
      ["4", 54],
      ["6", 31],
      ["8", 8],
    ]);
    assert.deepEqual(layout.lines.map((line) => [line.points, line.last, line.end]), [
      [4, 6, [292, 31]],
      [4, 1, [292, 88.5]],
    ]);
    assert.deepEqual(pointsOf(layout.lines[0]!.d), [[206.7, 100], [228, 54], [249.3, 8], [292, 31]]);
    assert.equal(layout.lines[0]!.d, "M206.7,100 L228,54 L249.3,8 M292,31 h0");
    assert.equal(layout.lines[1]!.d, "M206.7,88.5 h0 M249.3,88.5 L270.7,88.5 L292,88.5");
  });

  Deno.test(`${where}samples older than the window are left out, and so is their scale`, () => {
    const at = [T0, T0 + 100_000, T0 + 110_000];
    const layout = f.chartLayout(at, [{ name: "a", values: [1000, 2, 3] }], FRAME);
    assert.equal(layout.lines[0]!.points, 2);
    assert.equal(layout.yTicks.at(-1)!.label, "3");
  });
}

Deno.test("property: whatever the values and times, a chart's points and ticks stay inside its plot, and every value shown is a point", () => {
  const frame = fc.record({
    width: fc.integer({ min: 0, max: 2_000 }),
    height: fc.integer({ min: 0, max: 600 }),
    margin: fc.record({
      top: fc.integer({ min: 0, max: 40 }),
      right: fc.integer({ min: 0, max: 40 }),
      bottom: fc.integer({ min: 0, max: 40 }),
      left: fc.integer({ min: 0, max: 60 }),
    }),
    windowS: fc.oneof(fc.constantFrom(900, 60, 5), anyDouble()),
  });
  const samples = fc.array(fc.integer({ min: 0, max: 600_000 }), { maxLength: 40 }).map((gaps) => {
    let at = T0;
    return gaps.map((gap) => (at += gap));
  });
  check(
    fc.property(
      frame,
      samples,
      fc.array(fc.array(fc.option(anyDouble()), { maxLength: 45 }), { maxLength: 10 }),
      (frame, at, values) => {
        const series = values.map((v, i) => ({ name: `s${i}`, values: v }));
        const layout: ChartLayout = chart.chartLayout(at, series, frame);
        const { left, top, right, bottom } = layout.plot;
        const inside = ([x, y]: [number, number]) =>
          Number.isFinite(x) && Number.isFinite(y) && x >= left && x <= right && y >= top && y <= bottom;
        const windowS = frame.windowS > 0 && Number.isFinite(frame.windowS) ? frame.windowS : 1;
        const newest = at.at(-1) ?? 0;
        let shown = 0;
        layout.lines.forEach((line, i) => {
          const expected = at.filter((t, j) => {
            const value = series[i]!.values[j];
            return (newest - t) / 1000 <= windowS && typeof value === "number" && Number.isFinite(value);
          }).length;
          assert.equal(line.points, expected);
          const points = pointsOf(line.d);
          assert.equal(points.length, expected);
          assert.ok(points.every(inside), line.d);
          assert.deepEqual(line.end, points.at(-1) ?? null);
          shown += expected;
        });
        assert.equal(layout.empty, shown === 0);
        assert.ok(layout.yTicks.length >= 2);
        for (const tick of layout.yTicks) {
          assert.ok(tick.at >= top && tick.at <= bottom, `${tick.at}`);
          assert.ok(!/NaN|Infinity|undefined/.test(tick.label), tick.label);
        }
        for (let i = 1; i < layout.yTicks.length; i++) {
          assert.ok(layout.yTicks[i]!.at < layout.yTicks[i - 1]!.at, "value ticks go up the plot");
        }
        for (const tick of layout.xTicks) {
          assert.ok(tick.at >= left && tick.at <= right, `${tick.at}`);
          assert.ok(!/NaN|Infinity|undefined/.test(tick.label), tick.label);
        }
        assert.equal(layout.xTicks.at(-1)?.label, "now");
      },
    ),
    300,
  );
});
