/**
 * Reading the body of `POST /v1/feedback`: one report object or an array of 1 to `MAX_REPORTS` of them,
 * each checked field by field. The first problem is thrown as a `ReportError` naming the field, `utilization`
 * for a single report and `[3].utilization` for the fourth of a batch, so that a rejected body changes
 * nothing. Pure: no I/O, no clock.
 */
import { formatHostPort, parseHostPort } from "../cluster/address.ts";
import { formatDuration, parseDuration } from "../cluster/duration.ts";

/** The most reports one request may carry. */
export const MAX_REPORTS = 1000;
/** The longest `ttl` a report may ask for. */
export const MAX_REPORT_TTL_MS = 24 * 3_600_000;

export type FeedbackState = "up" | "drain" | "down";

/** The load an application reports, as in an ORCA report: utilization 0..1, queries and errors per second. */
export interface LoadFigures {
  readonly utilization: number;
  readonly qps?: number;
  readonly eps?: number;
}

/** One checked report for one backend of one service. */
export interface Report {
  readonly service: string;
  /** The backend's address written as the config writes it (`host:port`, IPv6 in brackets). */
  readonly backend: string;
  /** A share of the configured weight, 0 to 100. */
  readonly weight?: number;
  readonly load?: LoadFigures;
  readonly state?: FeedbackState;
  /** How long the report holds; the service's `feedback.ttl` when absent. */
  readonly ttlMs?: number;
}

/** A report body that cannot be used; `path` names the field, as `[3].utilization`. */
export class ReportError extends Error {
  override readonly name = "ReportError";
  constructor(message: string, readonly path: string) {
    super(message);
  }
}

const KEYS = new Set(["service", "backend", "weight", "utilization", "qps", "eps", "state", "ttl"]);
const STATES: readonly FeedbackState[] = ["up", "drain", "down"];

/** Checks a parsed JSON body; returns its reports in order. Throws a `ReportError` at the first problem. */
export function parseReports(body: unknown): Report[] {
  if (Array.isArray(body)) {
    if (body.length === 0 || body.length > MAX_REPORTS) {
      throw new ReportError(
        `Expected 1 to ${MAX_REPORTS} reports in the array, got ${body.length}`,
        "",
      );
    }
    return body.map((item, index) => parseReport(item, `[${index}]`));
  }
  return [parseReport(body, "")];
}

/** Checks one report; `at` is its place in a batch (`[3]`), empty for a single report. */
export function parseReport(value: unknown, at = ""): Report {
  const path = (field: string) => at === "" ? field : `${at}.${field}`;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ReportError(`Expected a report object, got ${describe(value)}`, at);
  }
  const fields = value as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!KEYS.has(key)) throw new ReportError(`Unknown field "${key}"`, path(key));
  }

  const service = fields.service;
  if (typeof service !== "string" || service === "") {
    throw new ReportError(`Expected a service name, got ${describe(service)}`, path("service"));
  }
  const backendText = fields.backend;
  if (typeof backendText !== "string") {
    throw new ReportError(
      `Expected a backend address host:port, got ${describe(backendText)}`,
      path("backend"),
    );
  }
  let backend: string;
  try {
    backend = formatHostPort(parseHostPort(backendText));
  } catch (error) {
    throw new ReportError((error as Error).message, path("backend"));
  }

  const number = (field: Figure): number | undefined =>
    fields[field] === undefined ? undefined : checkFigure(field, fields[field], { path: path(field) });
  const weight = number("weight");
  const utilization = number("utilization");
  const qps = number("qps");
  const eps = number("eps");

  const stateValue = fields.state;
  if (stateValue !== undefined && !STATES.includes(stateValue as FeedbackState)) {
    throw new ReportError(`Expected state up, drain or down, got ${describe(stateValue)}`, path("state"));
  }
  const state = stateValue as FeedbackState | undefined;

  let ttlMs: number | undefined;
  if (fields.ttl !== undefined) {
    if (typeof fields.ttl !== "string") {
      throw new ReportError(
        `Expected ttl to be a duration such as "30s", got ${describe(fields.ttl)}`,
        path("ttl"),
      );
    }
    try {
      ttlMs = parseDuration(fields.ttl);
    } catch (error) {
      throw new ReportError((error as Error).message, path("ttl"));
    }
    checkTtl(ttlMs, { path: path("ttl"), written: `"${fields.ttl}"` });
  }

  if (utilization === undefined && (qps !== undefined || eps !== undefined)) {
    const field = qps !== undefined ? "qps" : "eps";
    throw new ReportError(`${field} goes with utilization, which is missing`, path(field));
  }
  if (eps !== undefined && qps === undefined) {
    throw new ReportError("eps needs qps: the error penalty is eps / qps", path("eps"));
  }
  if (weight !== undefined && utilization !== undefined) {
    throw new ReportError("Give weight or the load figures, not both", path("utilization"));
  }
  if (weight === undefined && utilization === undefined && state === undefined) {
    throw new ReportError("Give at least one of weight, utilization or state", at);
  }

  let load: LoadFigures | undefined;
  if (utilization !== undefined) {
    load = {
      utilization,
      ...(qps !== undefined ? { qps } : {}),
      ...(eps !== undefined ? { eps } : {}),
    };
  }
  return {
    service,
    backend,
    ...(weight !== undefined ? { weight } : {}),
    ...(load !== undefined ? { load } : {}),
    ...(state !== undefined ? { state } : {}),
    ...(ttlMs !== undefined ? { ttlMs } : {}),
  };
}

/** The range of each number a report may carry, both ends included. */
const FIGURES = {
  weight: [0, 100],
  utilization: [0, 1],
  qps: [0, Number.MAX_VALUE],
  eps: [0, Number.MAX_VALUE],
} as const;
export type Figure = keyof typeof FIGURES;

/**
 * `value` when it is a finite number in the range of `field`; else a `ReportError` at `path` (the field's
 * name unless given). What the feedback formulas need of each figure, checked where it enters.
 */
export function checkFigure(field: Figure, value: unknown, options: { path?: string } = {}): number {
  const { path = field } = options;
  const [min, max] = FIGURES[field];
  if (typeof value !== "number" || !(value >= min && value <= max)) {
    const range = max === Number.MAX_VALUE ? `a number ≥ ${min}` : `a number from ${min} to ${max}`;
    throw new ReportError(`Expected ${field} to be ${range}, got ${describe(value)}`, path);
  }
  return value;
}

/** A report's ttl in ms: from 1 ms to `MAX_REPORT_TTL_MS`, else a `ReportError` at `path`. */
export function checkTtl(ms: number, options: { path?: string; written?: string } = {}): number {
  const { path = "ttl", written = `${ms}ms` } = options;
  if (!(ms >= 1 && ms <= MAX_REPORT_TTL_MS)) {
    throw new ReportError(
      `Expected ttl from 1ms to ${formatDuration(MAX_REPORT_TTL_MS)}, got ${written}`,
      path,
    );
  }
  return ms;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return `"${value.length > 40 ? `${value.slice(0, 40)}…` : value}"`;
  return String(value);
}
