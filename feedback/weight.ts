/**
 * Turning feedback reports into weights. Pure: no I/O, and the time is always passed in.
 *
 * A report is a backend's whole statement about itself in one service, and holds until it expires
 * (`ttl`, or the service's `feedback.ttl`); then the backend is back at its configured weight and state.
 *
 * - `weight` (0–100) is an explicit share of the configured weight and applies at once: the application
 *   has decided, so nothing smooths it.
 * - Load (`utilization`, `qps`, `eps`) is a measurement, turned into a weight the way gRPC's weighted round
 *   robin turns ORCA reports into one:
 *
 *       raw = qps / (utilization + eps / qps × error_utilization_penalty)        (1 / utilization without qps)
 *
 *   held within [`Number.MIN_VALUE`, `Number.MAX_VALUE`]: a utilization of 1e-320 (1 / it is Infinity) or a
 *   qps of 1e308 is the largest raw weight there is, not Infinity. A raw weight means something only next
 *   to the others of the same service, so it is normalised among the service's backends that have a live
 *   load report: the mean raw weight maps to their mean configured weight, and the ratio to the mean is
 *   clamped to [0.1, 10] as gRPC's scheduler does:
 *
 *       target = clamp(raw / mean(raw), 0.1, 10) × mean(configured)
 *
 *   The mean is taken of the raw weights divided by the largest of them (each in [0, 1], the largest 1),
 *   so it is at least 1 / count and the sum cannot overflow: the ratio is finite whatever the reports said.
 *   A report without a usable signal (utilization or qps of 0) targets the configured weight. The weight
 *   then moves from where it is toward the target by exponential smoothing, and by at most `max_step` of
 *   the configured weight per report:
 *
 *       next = smoothing × previous + (1 − smoothing) × target,   |next − previous| ≤ max_step × configured
 *
 *   and never past the target. Every weight these functions return is finite.
 *
 * - `state` is `up` unless the report says `drain` (no new decisions, open connections finish) or `down`
 *   (out of new decisions at once).
 */
import { checkFigure, checkTtl, type FeedbackState, type LoadFigures, type Report } from "./report.ts";

export const FEEDBACK_DEFAULTS = {
  /** gRPC's `error_utilization_penalty`: how much one error per query weighs as utilization. */
  errorUtilizationPenalty: 1.0,
  /** A load-derived weight is at least this share of the mean… */
  minRatio: 0.1,
  /** …and at most this multiple of it (gRPC's static stride scheduler clamps to the same range). */
  maxRatio: 10,
} as const;

/** The service's `feedback` settings, in the units of the config. */
export interface FeedbackSettings {
  readonly ttlMs: number;
  /** 0 (none) to 1: the share of the previous weight kept at each load report. */
  readonly smoothing: number;
  /** More than 0, at most 1: the most one load report moves the weight, as a share of the configured weight. */
  readonly maxStep: number;
}

/** What a backend's last report left: the weight it sets, why, and until when. */
export interface FeedbackRecord {
  readonly source: "weight" | "load" | "state";
  /** The share of the configured weight as reported (0–100); null unless `source` is `weight`. */
  readonly reportedWeight: number | null;
  /** The load figures as reported; null unless `source` is `load`. */
  readonly load: LoadFigures | null;
  /** The raw load-derived weight; null without load or without a usable signal. */
  readonly raw: number | null;
  /** The weight the report asked for, before smoothing and `max_step`; null for a state-only report. */
  readonly target: number | null;
  /** The weight feedback gives the backend now; null for a state-only report (the configured weight). */
  readonly weight: number | null;
  readonly state: FeedbackState;
  readonly reportedAt: number;
  readonly expiresAt: number;
}

/** Another backend of the same service, as the normalisation of load sees it. */
export interface LoadPeer {
  readonly configured: number;
  /** Its live raw load-derived weight; null when it has no live load report with a usable signal. */
  readonly raw: number | null;
}

export interface LoadOptions {
  readonly errorUtilizationPenalty?: number;
}

/**
 * gRPC's weighted-round-robin weight of a load report: `qps / (utilization + eps / qps × penalty)`, or
 * `1 / utilization` without qps, held within [`Number.MIN_VALUE`, `Number.MAX_VALUE`]. Null when there is
 * no usable signal (utilization or qps of 0, which gRPC also treats as "no weight") or a figure is not a
 * finite number. Never throws.
 */
export function loadWeight(load: LoadFigures, options: LoadOptions = {}): number | null {
  const penalty = options.errorUtilizationPenalty ?? FEEDBACK_DEFAULTS.errorUtilizationPenalty;
  const { utilization, qps, eps = 0 } = load;
  if (!isPositive(utilization)) return null;
  if (qps === undefined) return clamp(1 / utilization, Number.MIN_VALUE, Number.MAX_VALUE);
  if (!isPositive(qps) || !Number.isFinite(eps)) return null;
  // eps / qps may overflow to Infinity; the raw weight is then 0, held at MIN_VALUE below.
  const errorPenalty = eps > 0 && penalty > 0 && Number.isFinite(penalty) ? (eps / qps) * penalty : 0;
  return clamp(qps / (utilization + errorPenalty), Number.MIN_VALUE, Number.MAX_VALUE);
}

/**
 * The weight a raw load-derived weight asks for, normalised among the backends of the service with a live
 * load signal (`peers`, without this one): the mean raw weight maps to the mean configured weight, and the
 * ratio to the mean is clamped to [`minRatio`, `maxRatio`]. Without a signal (a raw weight that is null or
 * not a finite number above 0): the configured weight. The result is finite, from 0 to
 * `maxRatio` × the largest configured weight counted. Throws a `RangeError` for a configured weight that is
 * not a finite number ≥ 0.
 */
export function loadTarget(raw: number | null, configured: number, peers: readonly LoadPeer[]): number {
  checkConfigured(configured);
  if (!isPositive(raw)) return configured;
  // Two passes over the peers, skipping those without a signal, with no array made: a load report is
  // normalised among every backend of its service, up to 65,535 of them.
  let largest = raw;
  let count = 1;
  for (const peer of peers) {
    if (!isPositive(peer.raw)) continue;
    checkConfigured(peer.configured);
    if (peer.raw > largest) largest = peer.raw;
    count++;
  }
  // Scaled by the largest, each raw weight is in [0, 1] and one of them is 1: the sum is from 1 to count,
  // and each configured weight divided by count before adding keeps that mean finite too.
  let scaledSum = raw / largest;
  let configuredMean = configured / count;
  for (const peer of peers) {
    if (!isPositive(peer.raw)) continue;
    scaledSum += peer.raw / largest;
    configuredMean += peer.configured / count;
  }
  const ratio = clamp(
    (raw / largest) / (scaledSum / count),
    FEEDBACK_DEFAULTS.minRatio,
    FEEDBACK_DEFAULTS.maxRatio,
  );
  return Math.min(ratio * configuredMean, Number.MAX_VALUE);
}

/**
 * One smoothing step from `previous` toward `target`: exponential smoothing, then at most
 * `maxStep × configured` away from `previous`. The result lies between `previous` and `target` (both
 * included), so it is finite. Throws a `RangeError` for a `previous` or `target` that is not finite, a
 * `smoothing` or `maxStep` outside 0 to 1, or a configured weight that is not a finite number ≥ 0.
 */
export function smoothStep(
  previous: number,
  target: number,
  options: { readonly smoothing: number; readonly maxStep: number; readonly configured: number },
): number {
  const { smoothing, maxStep, configured } = options;
  if (!Number.isFinite(previous) || !Number.isFinite(target)) {
    throw new RangeError(`Cannot smooth a weight from ${previous} toward ${target}: both must be finite`);
  }
  if (!(smoothing >= 0 && smoothing <= 1)) {
    throw new RangeError(`Expected smoothing to be a number from 0 to 1, got ${smoothing}`);
  }
  if (!(maxStep >= 0 && maxStep <= 1)) {
    throw new RangeError(`Expected max_step to be a number from 0 to 1, got ${maxStep}`);
  }
  checkConfigured(configured);
  // Each product is at most its finite factor; only their sum may round past MAX_VALUE, and the clamp to
  // [previous, target] brings that back.
  const smoothed = clamp(
    smoothing * previous + (1 - smoothing) * target,
    Math.min(previous, target),
    Math.max(previous, target),
  );
  const limit = maxStep * configured;
  return clamp(smoothed, previous - limit, previous + limit);
}

/** What `applyReport` needs besides the report. */
export interface ReportContext {
  readonly configured: number;
  /** This backend's record, if it has one (expired or not). */
  readonly current: FeedbackRecord | null;
  /** The other backends of the service; only their live load signals count. */
  readonly peers: readonly LoadPeer[];
  readonly settings: FeedbackSettings;
  readonly now: number;
}

/**
 * The record a report leaves: its `target` and `weight` are finite, from 0 to `maxRatio` × the largest
 * configured weight in the context. Throws a `ReportError` naming the field (`weight`, `utilization`, `qps`,
 * `eps`, `ttl`) when one is outside what `parseReport` accepts, and a `RangeError` for a context that the
 * config could not have made (a configured weight or a setting out of range).
 */
export function applyReport(report: Report, context: ReportContext): FeedbackRecord {
  const { configured, settings, now } = context;
  checkConfigured(configured);
  const ttlMs = report.ttlMs ?? settings.ttlMs;
  if (report.ttlMs !== undefined) checkTtl(report.ttlMs);
  if (report.weight !== undefined) checkFigure("weight", report.weight);
  if (report.load !== undefined) {
    checkFigure("utilization", report.load.utilization);
    if (report.load.qps !== undefined) checkFigure("qps", report.load.qps);
    if (report.load.eps !== undefined) checkFigure("eps", report.load.eps);
  }
  const base = {
    state: report.state ?? "up",
    reportedAt: now,
    expiresAt: now + ttlMs,
  } as const;
  if (report.weight !== undefined) {
    const weight = configured * (report.weight / 100);
    return {
      ...base,
      source: "weight",
      reportedWeight: report.weight,
      load: null,
      raw: null,
      target: weight,
      weight,
    };
  }
  if (report.load !== undefined) {
    const raw = loadWeight(report.load);
    const target = loadTarget(raw, configured, context.peers);
    const previous = feedbackWeight(context.current, configured, now);
    const weight = smoothStep(previous, target, { ...settings, configured });
    return { ...base, source: "load", reportedWeight: null, load: report.load, raw, target, weight };
  }
  return {
    ...base,
    source: "state",
    reportedWeight: null,
    load: null,
    raw: null,
    target: null,
    weight: null,
  };
}

/** Whether a record still holds at `now`. */
export function isLive(record: FeedbackRecord | null, now: number): record is FeedbackRecord {
  return record !== null && now < record.expiresAt;
}

/** The weight feedback gives a backend at `now`: its record's, or the configured one. */
export function feedbackWeight(record: FeedbackRecord | null, configured: number, now: number): number {
  return isLive(record, now) && record.weight !== null ? record.weight : configured;
}

/** The state feedback gives a backend at `now`: its record's, or `up`. */
export function feedbackState(record: FeedbackRecord | null, now: number): FeedbackState {
  return isLive(record, now) ? record.state : "up";
}

/** The raw load signal a record contributes to its service's normalisation at `now`. */
export function liveRaw(record: FeedbackRecord | null, now: number): number | null {
  return isLive(record, now) && record.source === "load" ? record.raw : null;
}

/** A number finite and above 0: a load figure or raw weight that carries a signal. */
function isPositive(value: number | null | undefined): value is number {
  return typeof value === "number" && value > 0 && Number.isFinite(value);
}

function checkConfigured(configured: number): void {
  if (!(configured >= 0 && configured <= Number.MAX_VALUE)) {
    throw new RangeError(`Expected a configured weight to be a finite number ≥ 0, got ${configured}`);
  }
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}
