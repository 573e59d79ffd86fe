/**
 * The manager's recent events, for the dashboard: feedback, backend state and health changes, operator
 * actions, agents joining and leaving, config reloads. A bounded log in memory, numbered so a reader asks
 * only for what is newer than what it has (`GET /v1/events?after=N`).
 *
 * Feedback arrives as often as every second per backend, so it is recorded only when it matters to a
 * reader: a backend's first report, a change of reported state, or an effective weight that moved by at
 * least `feedbackStep` of the configured weight since the last feedback event of that backend.
 */

export const EVENTS_DEFAULTS = {
  /** Events kept; the oldest go first. */
  capacity: 200,
  /** A feedback event is recorded when the effective weight moved by this share of the configured one. */
  feedbackStep: 0.1,
  /** At most this many events per answer of `after()`. */
  pageSize: 200,
} as const;

export type EventKind = "feedback" | "state" | "health" | "operator" | "agent" | "config";

export interface ClusterEvent {
  /** Rises by one per event, from 1. */
  readonly seq: number;
  /** Wall-clock time, ms since the epoch. */
  readonly at: number;
  readonly kind: EventKind;
  readonly message: string;
  /** `warning` for what takes capacity away (a backend down, an agent dropped); `info` otherwise. */
  readonly severity: "info" | "warning";
  readonly service?: string;
  readonly backend?: string;
  readonly agent?: string;
}

export type NewEvent = Omit<ClusterEvent, "seq" | "at" | "severity"> & {
  readonly severity?: ClusterEvent["severity"];
};

/** One backend's feedback as it was applied, for `EventLog.feedback`. */
export interface FeedbackChange {
  readonly service: string;
  readonly backend: string;
  readonly configured: number;
  readonly effectiveWeight: number;
  /** The state the report gave (up, drain, down). */
  readonly state: string;
  /** What was reported, in words: `utilization 0.42`, `weight 40%`. */
  readonly reported: string;
}

export interface EventLogOptions {
  readonly capacity?: number;
  readonly feedbackStep?: number;
  /** Wall clock, ms since the epoch; `Date.now` by default. */
  readonly now?: () => number;
}

export class EventLog {
  readonly #events: ClusterEvent[] = [];
  readonly #capacity: number;
  readonly #feedbackStep: number;
  readonly #now: () => number;
  /** The effective weight and state of each backend's last feedback event, by service and backend. */
  readonly #lastFeedback = new Map<string, { weight: number; state: string }>();
  #seq = 0;

  constructor(options: EventLogOptions = {}) {
    this.#capacity = options.capacity ?? EVENTS_DEFAULTS.capacity;
    this.#feedbackStep = options.feedbackStep ?? EVENTS_DEFAULTS.feedbackStep;
    this.#now = options.now ?? Date.now;
  }

  /** The number of the newest event; 0 before the first. */
  get last(): number {
    return this.#seq;
  }

  add(event: NewEvent): ClusterEvent {
    const recorded: ClusterEvent = { seq: ++this.#seq, at: this.#now(), severity: "info", ...event };
    this.#events.push(recorded);
    if (this.#events.length > this.#capacity) this.#events.splice(0, this.#events.length - this.#capacity);
    return recorded;
  }

  /** Records a feedback report when it changed enough to tell (see the module's comment); else null. */
  feedback(change: FeedbackChange): ClusterEvent | null {
    const key = `${change.service}\u0000${change.backend}`;
    const last = this.#lastFeedback.get(key);
    const step = Math.max(1, change.configured) * this.#feedbackStep;
    if (
      last !== undefined && last.state === change.state &&
      Math.abs(last.weight - change.effectiveWeight) < step
    ) {
      return null;
    }
    this.#lastFeedback.set(key, { weight: change.effectiveWeight, state: change.state });
    const state = change.state === "up" ? "" : `, state ${change.state}`;
    return this.add({
      kind: "feedback",
      service: change.service,
      backend: change.backend,
      message: `Feedback for ${change.backend} of ${change.service}: ${change.reported}${state}; ` +
        `effective weight ${change.effectiveWeight} of ${change.configured}`,
    });
  }

  /** Forgets a backend's last feedback event, so its next report is recorded (its feedback expired). */
  forgetFeedback(service: string, backend: string): void {
    this.#lastFeedback.delete(`${service}\u0000${backend}`);
  }

  /** Events newer than `seq`, oldest first, at most `limit`: the newest ones when there are more. */
  after(seq: number, limit: number = EVENTS_DEFAULTS.pageSize): ClusterEvent[] {
    const newer = this.#events.filter((event) => event.seq > seq);
    return newer.slice(Math.max(0, newer.length - limit));
  }
}
