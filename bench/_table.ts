/** The bench's result table: every figure of every target, and its ratio to the baseline's figure. Pure. */

/** What was measured for one target; null where it was not (tool missing, failed, not applicable). */
export interface Row {
  readonly label: string;
  readonly keepAliveRps: number | null;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  readonly newConnectionsPerSecond: number | null;
  readonly bulkGbitPerSecond: number | null;
  readonly kibPerIdleConnection: number | null;
}

interface Column {
  readonly title: string;
  readonly value: (row: Row) => number | null;
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
  { title: "keep-alive req/s", value: (row) => row.keepAliveRps, format: (v) => grouped.format(v) },
  { title: "p50 ms", value: (row) => row.p50Ms, format: milliseconds },
  { title: "p99 ms", value: (row) => row.p99Ms, format: milliseconds },
  { title: "new conn/s", value: (row) => row.newConnectionsPerSecond, format: (v) => grouped.format(v) },
  { title: "bulk Gbit/s", value: (row) => row.bulkGbitPerSecond, format: decimals(2) },
  { title: "KiB/idle conn", value: (row) => row.kibPerIdleConnection, format: decimals(1) },
];

/**
 * One markdown table: a row per target, each figure followed by its ratio to `baseline`'s figure in the
 * same column ("—" where either is missing).
 */
export function formatTable(rows: readonly Row[], baseline: Row | null, baselineName = "HAProxy"): string {
  const header = ["target"];
  for (const column of COLUMNS) header.push(column.title, `× ${baselineName}`);
  const lines = [header, header.map((_, i) => (i === 0 ? "---" : "---:"))];
  for (const row of rows) {
    const cells = [row.label];
    for (const column of COLUMNS) {
      const value = column.value(row);
      const base = baseline ? column.value(baseline) : null;
      cells.push(value === null ? "—" : column.format(value));
      cells.push(value === null || base === null || base === 0 ? "—" : `${(value / base).toFixed(2)}×`);
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
