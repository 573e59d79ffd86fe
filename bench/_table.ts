/** The bench's result table: every figure of every target, and its ratio to the baseline's figure. Pure. */

/** What was measured for one target; null where it was not (tool missing, failed, not applicable). */
export interface Row {
  readonly label: string;
  readonly keepAliveRps: number | null;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  readonly newConnectionsPerSecond: number | null;
  readonly bulkGbitPerSecond: number | null;
  /** `redis-benchmark -P 16`: the mean of its SET and GET requests/s. */
  readonly redisRps: number | null;
  readonly kibPerIdleConnection: number | null;
  /**
   * Ratios to the baseline measured beside this target (the median of each measurement's ratio to the
   * baseline's run next to it), where there are some; any other column's ratio is the figure divided by the
   * baseline's.
   */
  readonly ratios?: Partial<Record<Figure, number | null>>;
}

/** The figures of a row. */
export type Figure = Exclude<keyof Row, "label" | "ratios">;

interface Column {
  readonly figure: Figure;
  readonly title: string;
  readonly format: (value: number) => string;
}

const grouped = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function decimals(digits: number): (value: number) => string {
  return (value) => value.toFixed(digits);
}

/** Milliseconds with three significant digits at most, so 0.09 and 12.3 both read well. */
function milliseconds(value: number): string {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  if (value >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

const COLUMNS: readonly Column[] = [
  { figure: "keepAliveRps", title: "keep-alive req/s", format: (v) => grouped.format(v) },
  { figure: "p50Ms", title: "p50 ms", format: milliseconds },
  { figure: "p99Ms", title: "p99 ms", format: milliseconds },
  { figure: "newConnectionsPerSecond", title: "new conn/s", format: (v) => grouped.format(v) },
  { figure: "bulkGbitPerSecond", title: "bulk Gbit/s", format: decimals(2) },
  { figure: "redisRps", title: "redis -P16 set/get req/s", format: (v) => grouped.format(v) },
  { figure: "kibPerIdleConnection", title: "KiB/idle conn", format: decimals(1) },
];

/**
 * One markdown table: a row per target, each figure followed by its ratio to `baseline`: the row's own
 * (`ratios`) where it has one for that column, else the figure divided by the baseline's ("—" where either
 * is missing).
 */
export function formatTable(rows: readonly Row[], baseline: Row | null, baselineName = "HAProxy"): string {
  const header = ["target"];
  for (const column of COLUMNS) header.push(column.title, `× ${baselineName}`);
  const lines = [header, header.map((_, i) => (i === 0 ? "---" : "---:"))];
  for (const row of rows) {
    const cells = [row.label];
    for (const { figure, format } of COLUMNS) {
      const value = row[figure];
      const base = baseline ? baseline[figure] : null;
      const ratio = baseline === null || value === null
        ? null
        : row.ratios?.[figure] !== undefined
        ? row.ratios[figure]
        : base === null || base === 0
        ? null
        : value / base;
      cells.push(value === null ? "—" : format(value));
      cells.push(ratio === null ? "—" : `${ratio.toFixed(2)}×`);
    }
    lines.push(cells);
  }
  return lines.map((cells) => `| ${cells.join(" | ")} |`).join("\n");
}

/** The median of `values` (the mean of the middle two for an even count); null when there are none. */
export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? sorted[middle] as number
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}
