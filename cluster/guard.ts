/**
 * How a long-lived loop survives one bad turn: `guard(where, turn)` runs the turn, and when it throws (or,
 * with `guardAsync`, its promise rejects) logs the error with its context, counts it by `where` for
 * `/metrics` (`switchyard_internal_errors_total{where}`), and returns undefined, so that the loop goes on
 * with the last good state. Every loop of both roles (health checks, feedback expiry, the cluster server's
 * per-agent handlers and pushes, reload, the agent's manager link) runs its turns through it; a process
 * exits only on purpose.
 *
 * A turn that fails again and again is logged at most once per `where` every `GUARD_DEFAULTS.logEveryMs`,
 * with the count of failures not logged since; the counter counts every one. `installLastResort` counts and
 * logs what still escapes (`where="unhandled"`) instead of letting it end the process.
 */
import { logger } from "./log.ts";

export const GUARD_DEFAULTS = {
  /** A `where` that keeps failing is logged at most once in this long. */
  logEveryMs: 10_000,
} as const;

const log = logger("internal");
const counts = new Map<string, number>();
const logged = new Map<string, { at: number; notLogged: number }>();

/** Failed turns since the process started, by where. */
export function internalErrors(): ReadonlyMap<string, number> {
  return counts;
}

/** Counts and logs one failed turn of `where`. */
export function reportInternalError(
  where: string,
  error: unknown,
  context: Record<string, unknown> = {},
): void {
  counts.set(where, (counts.get(where) ?? 0) + 1);
  const now = performance.now();
  const last = logged.get(where);
  if (last !== undefined && now - last.at < GUARD_DEFAULTS.logEveryMs) {
    last.notLogged++;
    return;
  }
  log.error("Internal error in {where}; going on with the last good state: {error}", {
    where,
    ...context,
    error,
    ...(last !== undefined && last.notLogged > 0 ? { notLoggedSince: last.notLogged } : {}),
  });
  logged.set(where, { at: now, notLogged: 0 });
}

/** Runs one turn of `where`; what it throws is counted and logged, and the turn returns undefined. */
export function guard<T>(where: string, turn: () => T, context: Record<string, unknown> = {}): T | undefined {
  try {
    return turn();
  } catch (error) {
    reportInternalError(where, error, context);
    return undefined;
  }
}

/** As `guard`, for a turn that awaits: a rejection is counted and logged, and the turn resolves undefined. */
export async function guardAsync<T>(
  where: string,
  turn: () => Promise<T>,
  context: Record<string, unknown> = {},
): Promise<T | undefined> {
  try {
    return await turn();
  } catch (error) {
    reportInternalError(where, error, context);
    return undefined;
  }
}

/**
 * For the roles' processes: an exception or rejection that no guard caught is counted and logged as
 * `where="unhandled"`, and the process goes on. Returns a function that removes the listeners.
 */
export function installLastResort(): () => void {
  const onRejection = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    reportInternalError("unhandled", event.reason);
  };
  const onError = (event: ErrorEvent) => {
    event.preventDefault();
    reportInternalError("unhandled", event.error);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  globalThis.addEventListener("error", onError);
  return () => {
    globalThis.removeEventListener("unhandledrejection", onRejection);
    globalThis.removeEventListener("error", onError);
  };
}
