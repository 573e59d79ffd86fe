/**
 * Prometheus's text exposition format (version 0.0.4), as both roles write their `/metrics`: a histogram
 * with fixed bounds and a page writer. Every figure is read at scrape time, so the writer is given finished
 * numbers and only formats them: names checked, label values escaped, histograms written as cumulative
 * `_bucket{le}` series ending at `le="+Inf"`, then `_sum` and `_count`.
 */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type Labels = Readonly<Record<string, string>>;
/** One series of a family: its labels and its value. */
export type Sample = readonly [Labels, number];

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/**
 * A histogram with fixed upper bounds: `observe` is O(buckets), allocates nothing, and keeps per-bucket
 * counts that `cumulative()` adds up the way Prometheus wants them (each bucket counts every value ≤ its
 * bound).
 */
export class Histogram {
  readonly bounds: readonly number[];
  readonly #counts: Float64Array;
  #sum = 0;
  #count = 0;

  constructor(bounds: readonly number[]) {
    for (let i = 0; i < bounds.length; i++) {
      const bound = bounds[i] as number;
      if (!Number.isFinite(bound) || (i > 0 && bound <= (bounds[i - 1] as number))) {
        throw new RangeError(
          `Cannot make a histogram with bounds [${bounds.join(", ")}]: they must be finite and rise`,
        );
      }
    }
    this.bounds = [...bounds];
    this.#counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    let index = 0;
    while (index < this.bounds.length && value > (this.bounds[index] as number)) index++;
    this.#counts[index] = (this.#counts[index] as number) + 1;
    this.#sum += value;
    this.#count++;
  }

  get sum(): number {
    return this.#sum;
  }

  get count(): number {
    return this.#count;
  }

  /** Counts of values ≤ each bound, then of all values (the `+Inf` bucket). */
  cumulative(): number[] {
    const out: number[] = [];
    let total = 0;
    for (const count of this.#counts) out.push(total += count);
    return out;
  }
}

/** Builds one `/metrics` page, family by family; each family is written once with its HELP and TYPE. */
export class Exposition {
  readonly #lines: string[] = [];
  readonly #names = new Set<string>();

  /** A counter family; its name must end in `_total`. A bare number is one series without labels. */
  counter(name: string, help: string, samples: Iterable<Sample> | number): this {
    if (!name.endsWith("_total")) {
      throw new TypeError(`Cannot name counter "${name}": a counter's name ends in _total`);
    }
    return this.#family(name, "counter", help, typeof samples === "number" ? [[{}, samples]] : samples);
  }

  /** A gauge family. A bare number is one series without labels. */
  gauge(name: string, help: string, samples: Iterable<Sample> | number): this {
    return this.#family(name, "gauge", help, typeof samples === "number" ? [[{}, samples]] : samples);
  }

  /** A histogram family: `_bucket{…,le}` for each bound and `+Inf`, then `_sum` and `_count`, per series. */
  histogram(name: string, help: string, series: Iterable<readonly [Labels, Histogram]>): this {
    this.#header(name, "histogram", help);
    for (const [labels, histogram] of series) {
      if ("le" in labels) throw new TypeError(`Cannot use label "le" on histogram "${name}": it is reserved`);
      const cumulative = histogram.cumulative();
      histogram.bounds.forEach((bound, index) => {
        this.#sample(`${name}_bucket`, { ...labels, le: formatNumber(bound) }, cumulative[index] as number);
      });
      this.#sample(`${name}_bucket`, { ...labels, le: "+Inf" }, histogram.count);
      this.#sample(`${name}_sum`, labels, histogram.sum);
      this.#sample(`${name}_count`, labels, histogram.count);
    }
    return this;
  }

  /** The page: every family, each line ending in a newline. */
  text(): string {
    return this.#lines.length === 0 ? "" : `${this.#lines.join("\n")}\n`;
  }

  #family(name: string, type: string, help: string, samples: Iterable<Sample>): this {
    this.#header(name, type, help);
    for (const [labels, value] of samples) this.#sample(name, labels, value);
    return this;
  }

  #header(name: string, type: string, help: string): void {
    if (!METRIC_NAME.test(name)) throw new TypeError(`Cannot name a metric "${name}": not a Prometheus name`);
    if (this.#names.has(name)) throw new TypeError(`Cannot write metric "${name}" twice on one page`);
    this.#names.add(name);
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
  }

  #sample(name: string, labels: Labels, value: number): void {
    const pairs = Object.entries(labels).map(([label, text]) => {
      if (!LABEL_NAME.test(label) || label.startsWith("__")) {
        throw new TypeError(`Cannot use label "${label}" on metric "${name}": not a Prometheus label name`);
      }
      return `${label}="${escapeLabelValue(text)}"`;
    });
    this.#lines.push(`${name}${pairs.length > 0 ? `{${pairs.join(",")}}` : ""} ${formatNumber(value)}`);
  }
}

/** A label value as the text format writes it: backslash, double quote and newline escaped. */
export function escapeLabelValue(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function escapeHelp(help: string): string {
  return help.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");
}

/** A sample value or `le` bound: `NaN`, `+Inf`, `-Inf`, or the shortest decimal that reads back exactly. */
export function formatNumber(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/**
 * Adds `switchyard_internal_errors_total{where}` to a page: turns of a loop that failed and were skipped
 * (`cluster/guard.ts`), on the manager's `/metrics` and the agent's alike. Every `where` known in advance
 * is written, at 0 until it fails, so that a rate over it needs no series to appear first.
 */
export function addInternalErrors(
  page: Exposition,
  errors: ReadonlyMap<string, number>,
  options: { readonly known?: readonly string[] } = {},
): Exposition {
  const { known = [] } = options;
  const counts = new Map<string, number>(known.map((where) => [where, 0]));
  for (const [where, count] of errors) counts.set(where, count);
  return page.counter(
    "switchyard_internal_errors_total",
    "Turns of a loop that failed with an internal error and were skipped, by where; the process went on.",
    [...counts].map(([where, count]): Sample => [{ where }, count]),
  );
}
