/**
 * A backend's health as the manager's checks see it, and the `rise`/`fall` rule that moves it: pure, so
 * the model (`state.ts`) applies it and the checker (`health.ts`) only feeds it results.
 *
 * Invariants: a backend starts `unknown`, which counts as up; `fall` failures in a row (active checks and
 * connect failures that agents report, cluster-wide) take it `down`; only `rise` passed active checks in a
 * row bring it back `up`.
 */
import type { AgentCheckReply } from "../feedback/mod.ts";

export type Health = "up" | "down" | "unknown";

/** The outcome of one check. */
export interface CheckResult {
  readonly ok: boolean;
  /** What was seen, for the log and the admin API: `connected`, `HTTP 503`, `connection refused`, … */
  readonly detail: string;
  /** The reply of an `agent-check`, when one was read. */
  readonly agent?: AgentCheckReply;
}

/** A backend's health and its passed and failed checks in a row. */
export interface HealthTrack {
  readonly health: Health;
  readonly successes: number;
  readonly failures: number;
}

/**
 * The track after `count` passed (`ok`) or failed checks: a pass from `unknown` is `up` at once; from
 * `down` it takes `rise` in a row; `fall` failures in a row from anywhere are `down`.
 */
export function nextHealth(
  track: HealthTrack,
  outcome: { readonly ok: boolean; readonly count?: number },
  rule: { readonly rise: number; readonly fall: number },
): HealthTrack {
  const count = outcome.count ?? 1;
  if (count <= 0) return track;
  if (outcome.ok) {
    const successes = track.successes + count;
    const health = track.health === "down" && successes < rule.rise ? "down" : "up";
    return { health, successes, failures: 0 };
  }
  const failures = track.failures + count;
  return { health: failures >= rule.fall ? "down" : track.health, successes: 0, failures };
}
