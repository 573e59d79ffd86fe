/**
 * Durations as written in the config and on the command line: `250ms`, `2s`, `5m`, `1h`, or a sum of
 * them such as `1m30s`. Values are carried as milliseconds everywhere inside switchyard.
 */

const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/**
 * The longest duration accepted: 24 days, under the 2^31 − 1 ms a timer can wait (a longer one fires at
 * once) and far under the largest integer a cluster frame carries.
 */
export const MAX_DURATION_MS = 576 * 3_600_000;
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;

/**
 * Parses a duration such as `250ms`, `2s`, `1.5s`, `5m` or `1m30s` into whole milliseconds, at most
 * `MAX_DURATION_MS`. Throws a `RangeError` for anything else.
 */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (trimmed === "") {
    throw new RangeError(`Cannot parse duration "${text}": it is empty`);
  }
  let total = 0;
  PART.lastIndex = 0;
  while (PART.lastIndex < trimmed.length) {
    const start = PART.lastIndex;
    const match = PART.exec(trimmed);
    if (match === null) {
      throw new RangeError(
        `Cannot parse duration "${shorten(text)}": expected a number and a unit (ms, s, m, h) at "${
          shorten(trimmed.slice(start))
        }"`,
      );
    }
    total += Number(match[1]) * (UNIT_MS[match[2] as string] as number);
  }
  // Digits enough make Infinity; a sum of parts may pass the limit too.
  if (!(total <= MAX_DURATION_MS)) {
    throw new RangeError(
      `Cannot use duration "${shorten(text)}": the longest is ${formatDuration(MAX_DURATION_MS)} (24 days)`,
    );
  }
  return Math.round(total);
}

/** Formats milliseconds as the shortest exact duration text: 1500 → `1500ms`, 2000 → `2s`, 300000 → `5m`. */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1_000 === 0) return `${ms / 1_000}s`;
  return `${ms}ms`;
}

/** A duration's text for a message: at most 40 characters. */
function shorten(text: string): string {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}
