/**
 * The one logger setup of every role: LogTape, categories under `["switchyard", role, …]`, human text by
 * default and JSON lines with `--log-format json`, always on stderr so stdout stays for what a user reads.
 */
import {
  configureSync,
  getJsonLinesFormatter,
  getLogger,
  getTextFormatter,
  type Logger,
  type LogRecord,
  resetSync,
} from "@logtape/logtape";

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFormat = "text" | "json";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

const encoder = new TextEncoder();

/** Sends every `switchyard` log record to stderr, synchronously so nothing is lost at exit. */
export function setupLogging(options: { level?: LogLevel; format?: LogFormat } = {}): void {
  const { level = "info", format = "text" } = options;
  const formatter = format === "json"
    ? getJsonLinesFormatter()
    : getTextFormatter({ timestamp: "date-time-tz" });
  resetSync();
  configureSync({
    reset: true,
    sinks: {
      stderr: (record: LogRecord) => {
        Deno.stderr.writeSync(encoder.encode(formatter(record)));
      },
    },
    loggers: [
      { category: ["switchyard"], lowestLevel: level === "warn" ? "warning" : level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/** The logger of one part of one role, e.g. `logger("agent", "pump")`. */
export function logger(...category: string[]): Logger {
  return getLogger(["switchyard", ...category]);
}

/**
 * At most one log line per window for a problem that repeats (an accept that fails, flows placed without
 * their answer): the others are counted, and the next line tells how many there were.
 */
export class LogWindow {
  #lastLogged = -Infinity;
  #unlogged = 0;

  constructor(readonly windowMs: number) {}

  /** Whether to log the problem now: the times it was not logged since the last line, or null. */
  due(now = performance.now()): number | null {
    if (now - this.#lastLogged <= this.windowMs) {
      this.#unlogged++;
      return null;
    }
    const unlogged = this.#unlogged;
    this.#lastLogged = now;
    this.#unlogged = 0;
    return unlogged;
  }
}
