/**
 * The geometry of the dashboard's history charts, pure: where each sample of each series goes in a chart of
 * a given size, the SVG path through them, the ticks of both axes and their labels, and each series' color.
 * The page's script (`client.ts`) turns a `ChartLayout` into SVG elements.
 *
 * `page.ts` embeds every function exported here into the page by its source text, beside the script, so a
 * function here may use only its parameters, the language's globals and the other functions exported here:
 * no constant or unexported helper of this module (the test of this file runs them from their source).
 */

/** One line of a chart: its name and a value per sample, oldest first; null where it had none. */
export interface ChartSeries {
  readonly name: string;
  readonly values: ReadonlyArray<number | null>;
}

/** A chart's size in pixels, the room around its plot for the labels, and the time its x axis spans. */
export interface ChartFrame {
  readonly width: number;
  readonly height: number;
  readonly margin: {
    readonly top: number;
    readonly right: number;
    readonly bottom: number;
    readonly left: number;
  };
  /** The x axis ends at the newest sample and reaches this many seconds back. */
  readonly windowS: number;
}

/** A tick of an axis: where it is along the axis, in pixels, its label, and which end of the label is there. */
export interface Tick {
  readonly at: number;
  readonly label: string;
  readonly anchor: "start" | "middle" | "end";
}

export interface ChartLine {
  readonly name: string;
  /** The SVG path through the samples that have a value; a gap where one has none. */
  readonly d: string;
  /** How many samples the path goes through. */
  readonly points: number;
  /** The newest value, null when none. */
  readonly last: number | null;
  /** Where the newest value is, null when none: the chart marks it, so that a line of one sample shows. */
  readonly end: readonly [number, number] | null;
}

export interface ChartLayout {
  /** The plot's edges, in pixels from the chart's top left corner. */
  readonly plot: {
    readonly left: number;
    readonly top: number;
    readonly right: number;
    readonly bottom: number;
  };
  readonly lines: ChartLine[];
  /** From 0 up, the top one at or above the largest value. */
  readonly yTicks: Tick[];
  /** From the oldest time the window reaches to the newest sample ("now"). */
  readonly xTicks: Tick[];
  /** No sample has a value: there is nothing to draw. */
  readonly empty: boolean;
}

/**
 * The smallest step of 1, 2 or 5 times a power of ten that cuts `span` into at most `count` steps; 0 when
 * there is no such step (a span that is not positive and finite, or too small to divide).
 */
export function niceStep(span: number, count: number): number {
  if (!(span > 0) || !Number.isFinite(span) || !(count >= 1)) return 0;
  const rough = span / Math.floor(count);
  const power = 10 ** Math.floor(Math.log10(rough));
  if (!(power > 0) || !Number.isFinite(power)) return 0;
  for (const multiple of [1, 2, 5, 10]) {
    // The tolerance keeps 0.3 / 0.1 = 2.9999999999999996 from taking the next step.
    if (span / (multiple * power) <= Math.floor(count) * (1 + 1e-9)) return multiple * power;
  }
  return 10 * power;
}

/**
 * The ticks of a value axis from 0 to at least `max`, at most `count` steps of a nice size: 0, 5, 10 for 8.
 * With nothing above 0 the axis goes to 1; where no nice step fits (subnormal or near-overflow values) it
 * is 0 and `max` alone.
 */
export function valueTicks(max: number, count: number): number[] {
  if (!(max > 0)) return [0, 1];
  const step = niceStep(max, count);
  const steps = step > 0 ? Math.ceil(max / step - 1e-9) : 0;
  if (steps < 1 || !Number.isFinite(steps * step)) return [0, max];
  return Array.from({ length: steps + 1 }, (_, i) => i * step);
}

/**
 * A value as a label of an axis whose ticks are `step` apart: as many decimals as the step needs (at most
 * 3), in thousands (k) from a step of 1000 and in millions (M) from a step of 100,000:
 * 0.25 by 0.05 → "0.25", 1500 by 500 → "1500", 20000 by 5000 → "20k", 1500000 by 500000 → "1.5M".
 */
export function formatValue(value: number, step: number): string {
  if (value === 0 || !Number.isFinite(value)) return value === 0 ? "0" : String(value);
  const [divisor, suffix] = step >= 1e5 ? [1e6, "M"] : step >= 1e3 ? [1e3, "k"] : [1, ""];
  const scaled = step > 0 && Number.isFinite(step) ? step / divisor : 1;
  const decimals = Math.min(3, Math.max(0, -Math.floor(Math.log10(scaled) + 1e-9)));
  return `${(value / divisor).toFixed(decimals)}${suffix}`;
}

/** A span of time in words: 30 → "30 s", 90 → "1.5 min", 900 → "15 min", 5400 → "1.5 h". */
export function formatDuration(seconds: number): string {
  const trimmed = (value: number) => String(Number(value.toFixed(1)));
  if (seconds < 60) return `${trimmed(seconds)} s`;
  if (seconds < 3600) return `${trimmed(seconds / 60)} min`;
  return `${trimmed(seconds / 3600)} h`;
}

/**
 * How far back a time axis reaches for samples spanning `spanS` seconds: that span rounded up to a round
 * length (1, 2, 5, 10, 15 or 30 minutes, then whole hours), and at most `windowS`, the time samples are
 * kept. A manager that started a minute ago has its minute across the whole chart, not in its last pixels.
 */
export function axisSpan(spanS: number, windowS: number): number {
  const span = spanS > 0 && Number.isFinite(spanS) ? spanS : 0;
  const lengths = [60, 120, 300, 600, 900, 1800, 3600];
  const rounded = lengths.find((length) => length >= span) ?? Math.ceil(span / 3600) * 3600;
  return windowS > 0 && Number.isFinite(windowS) ? Math.min(windowS, rounded) : rounded;
}

/**
 * The ticks of a time axis that spans `windowS` seconds up to now, as seconds before now, oldest first,
 * at most `count` steps of a round length (5 s, 1 min, 5 min, …): 900, 600, 300, 0 for 15 minutes.
 */
export function timeTicks(windowS: number, count: number): number[] {
  if (!(windowS > 0) || !Number.isFinite(windowS)) return [0];
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const hours = 3600 * niceStep(windowS / 3600, count);
  const step = steps.find((candidate) => windowS / candidate <= Math.max(1, count) * (1 + 1e-9)) ??
    (hours > 0 && Number.isFinite(hours) ? hours : windowS);
  const ticks = Math.floor(windowS / step + 1e-9);
  return Array.from({ length: ticks + 1 }, (_, i) => (ticks - i) * step);
}

/**
 * The SVG path through `points` ([x, y], or null where a sample has no value): a line through each run of
 * points, a gap between runs, and a point alone as a zero-length line (`h0`), which the chart's round line
 * caps draw as a dot.
 */
export function linePath(points: ReadonlyArray<readonly [number, number] | null>): string {
  const parts: string[] = [];
  points.forEach((point, i) => {
    if (point === null) return;
    const joined = i > 0 && points[i - 1] !== null;
    parts.push(`${joined ? "L" : "M"}${point[0]},${point[1]}`);
    const alone = !joined && (points[i + 1] ?? null) === null;
    if (alone) parts.push("h0");
  });
  return parts.join(" ");
}

/** The color of the series at `index`, and past the palette's eight colors a dash pattern too. */
export function seriesStyle(index: number): { color: string; dash: string } {
  const palette = ["#2f6fde", "#1f9d55", "#d97706", "#9333ea", "#db2777", "#0891b2", "#65a30d", "#dc2626"];
  const dashes = ["", "6 3", "2 3"];
  const i = Number.isSafeInteger(index) && index >= 0 ? index : 0;
  return {
    color: palette[i % palette.length]!,
    dash: dashes[Math.floor(i / palette.length) % dashes.length]!,
  };
}

/**
 * Where everything of a chart goes: `times` are the samples' times (ms since the epoch, oldest first), each
 * series has a value per sample. The x axis ends at the newest sample and reaches `frame.windowS` back; the
 * y axis starts at 0. Coordinates are rounded to a tenth of a pixel, and stay inside the plot whatever the
 * values (a negative value sits on the axis, one that is not finite counts as none).
 */
export function chartLayout(
  times: readonly number[],
  series: readonly ChartSeries[],
  frame: ChartFrame,
): ChartLayout {
  const { width, height, margin } = frame;
  const plot = {
    left: margin.left,
    top: margin.top,
    right: Math.max(margin.left + 1, width - margin.right),
    bottom: Math.max(margin.top + 1, height - margin.bottom),
  };
  const plotWidth = plot.right - plot.left;
  const plotHeight = plot.bottom - plot.top;
  const windowS = frame.windowS > 0 && Number.isFinite(frame.windowS) ? frame.windowS : 1;
  const round = (value: number) => Math.round(value * 10) / 10;
  const newest = times.length > 0 ? times[times.length - 1]! : 0;
  const xs = times.map((time) => {
    const age = (newest - time) / 1000;
    return age >= 0 && age <= windowS ? round(plot.right - (age / windowS) * plotWidth) : null;
  });
  const usable = (value: number | null | undefined): value is number =>
    typeof value === "number" && Number.isFinite(value);
  let max = 0;
  for (const { values } of series) {
    values.forEach((value, i) => {
      if (usable(value) && xs[i] !== null && xs[i] !== undefined) max = Math.max(max, value);
    });
  }
  const ticks = valueTicks(max, Math.max(1, Math.floor(plotHeight / 22)));
  const top = ticks[ticks.length - 1]!;
  const y = (value: number) => round(plot.bottom - (Math.min(Math.max(value, 0), top) / top) * plotHeight);
  const step = ticks.length > 1 ? ticks[1]! : top;
  let empty = true;
  const lines = series.map(({ name, values }): ChartLine => {
    const points: Array<[number, number] | null> = [];
    let last: number | null = null;
    let end: [number, number] | null = null;
    xs.forEach((x, i) => {
      const value = values[i];
      const point: [number, number] | null = x !== null && usable(value) ? [x, y(value)] : null;
      points.push(point);
      if (point !== null) [last, end] = [value as number, point];
    });
    const count = points.filter((point) => point !== null).length;
    if (count > 0) empty = false;
    return { name, d: linePath(points), points: count, last, end };
  });
  return {
    plot,
    lines,
    yTicks: ticks.map((value) => ({ at: y(value), label: formatValue(value, step), anchor: "end" })),
    xTicks: timeTicks(windowS, Math.max(1, Math.floor(plotWidth / 70))).map((age) => ({
      at: round(plot.right - (age / windowS) * plotWidth),
      label: age === 0 ? "now" : `-${formatDuration(age)}`,
      // The newest tick is at the plot's right edge: its label ends there rather than running past it.
      anchor: age === 0 ? "end" : "middle",
    })),
    empty,
  };
}
