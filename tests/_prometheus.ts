/**
 * Reading a `/metrics` page back in tests: every sample with its labels unescaped, every comment checked to
 * be a HELP or TYPE line, every label pair consumed. What the writer (`cluster/prometheus.ts`) must give.
 */
import assert from "node:assert/strict";

/** One sample line: its name, its labels as written back, its value as text and as a number. */
export interface Series {
  readonly name: string;
  readonly labels: Record<string, string>;
  /** The value as the page writes it (`0.01`, `+Inf`). */
  readonly text: string;
  readonly value: number;
}

/** Parses a text-format page into its samples; fails on a line that is neither a comment nor a sample. */
export function parseMetrics(page: string): Series[] {
  const out: Series[] = [];
  for (const line of page.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      assert.match(line, /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* /, "a HELP or TYPE comment");
      continue;
    }
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const written = match[2] ?? "";
    let consumed = 0;
    for (const pair of written.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g)) {
      labels[pair[1] as string] = (pair[2] as string).replace(/\\(.)/g, (_, c) => c === "n" ? "\n" : c);
      consumed += pair[0].length;
    }
    assert.equal(consumed, written.length, `labels of ${line} parse completely`);
    const text = match[3] as string;
    out.push({ name: match[1] as string, labels, text, value: Number(text) });
  }
  return out;
}

/** The sum of the samples named `name` whose labels include `labels`. */
export function sumOf(series: readonly Series[], name: string, labels: Record<string, string> = {}): number {
  return series
    .filter((s) => s.name === name && Object.entries(labels).every(([key, value]) => s.labels[key] === value))
    .reduce((total, s) => total + s.value, 0);
}

/**
 * The new connections a manager's `/metrics` page says it decided: those its claimants asked about one by
 * one, and those that took a decision from one of its queues made ahead (`switchyard_decisions_total` counts
 * both).
 */
export function flowsDecided(page: string): number {
  return sumOf(parseMetrics(page), "switchyard_decisions_total");
}
