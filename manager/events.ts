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
  /** What was reported, in words (`utilization 0.42`, `weight 40%`), or how to say it when recorded. */
  readonly reported: string | (() => string);
}

export interface EventLogOptions {
  readonly capacity?: number;
  readonly feedbackStep?: number;
  /** Wall clock, ms since the epoch; `Date.now` by default. */
  readonly now?: () => number;
}

export class EventLog {
  /** The newest events, oldest first from `#first`, in a ring of `#capacity`: adding one moves nothing. */
  readonly #events: ClusterEvent[] = [];
  #first = 0;
  readonly #capacity: number;
  readonly #feedbackStep: number;
  readonly #now: () => number;
  /** The effective weight and state of each backend's last feedback event, by service, then backend. */
  readonly #lastFeedback = new Map<string, Map<string, { weight: number; state: string }>>();
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
    if (this.#events.length < this.#capacity) {
      this.#events.push(recorded);
    } else {
      this.#events[this.#first] = recorded;
      this.#first = (this.#first + 1) % this.#capacity;
    }
    return recorded;
  }

  /** Records a feedback report when it changed enough to tell (see the module's comment); else null. */
  feedback(change: FeedbackChange): ClusterEvent | null {
    return this.#tells(change) ? this.add(feedbackEvent(change)) : null;
  }

  /**
   * Records the reports of one batch as `feedback` does each. Of more than the log keeps, only the newest
   * are written out: the others would be dropped at once (a batch of 1,000 spent most of its time here).
   */
  feedbackAll(changes: readonly FeedbackChange[]): void {
    const told = changes.filter((change) => this.#tells(change));
    for (const change of told.slice(-this.#capacity)) this.add(feedbackEvent(change));
  }

  /** Whether a report changed enough to tell; if so, it becomes the backend's last told. */
  #tells(change: FeedbackChange): boolean {
    let service = this.#lastFeedback.get(change.service);
    if (service === undefined) this.#lastFeedback.set(change.service, service = new Map());
    const last = service.get(change.backend);
    const step = Math.max(1, change.configured) * this.#feedbackStep;
    if (last === undefined) {
      service.set(change.backend, { weight: change.effectiveWeight, state: change.state });
      return true;
    }
    if (last.state === change.state && Math.abs(last.weight - change.effectiveWeight) < step) return false;
    last.weight = change.effectiveWeight;
    last.state = change.state;
    return true;
  }

  /** Forgets a backend's last feedback event, so its next report is recorded (its feedback expired). */
  forgetFeedback(service: string, backend: string): void {
    this.#lastFeedback.get(service)?.delete(backend);
  }

  /** Events newer than `seq`, oldest first, at most `limit`: the newest ones when there are more. */
  after(seq: number, limit: number = EVENTS_DEFAULTS.pageSize): ClusterEvent[] {
    const ordered = [...this.#events.slice(this.#first), ...this.#events.slice(0, this.#first)];
    const newer = ordered.filter((event) => event.seq > seq);
    return newer.slice(Math.max(0, newer.length - limit));
  }
}

function feedbackEvent(change: FeedbackChange): NewEvent {
  const state = change.state === "up" ? "" : `, state ${change.state}`;
  const reported = typeof change.reported === "function" ? change.reported() : change.reported;
  return {
    kind: "feedback",
    service: change.service,
    backend: change.backend,
    message: `Feedback for ${change.backend} of ${change.service}: ${reported}${state}; ` +
      `effective weight ${change.effectiveWeight} of ${change.configured}`,
  };
}
