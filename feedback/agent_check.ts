/**
 * HAProxy's agent-check text protocol: the manager connects to a backend's agent port and reads one line
 * of words separated by spaces, tabs or commas, in any order, case-insensitive, such as `up 75%`, `drain`
 * or `down#disk full`:
 *
 * - `up` / `down`, `fail`, `stopped`: the backend's operational state (a `down` reply is a failed check);
 * - `ready`, `drain`, `maint`: its administrative state (`maint` takes it out at once, like `down` feedback);
 * - `75%`: its weight as a share of the configured weight (over 100 % is held at 100 %);
 * - `maxconn:N` is accepted and ignored; so is any other word, and anything after `#` is a description.
 *
 * Unlike HAProxy, each reply is the agent's whole statement, as a feedback report is: a reply that does
 * not say `drain` or `maint` makes the backend ready, and one without a percentage gives it 100 %. So an
 * agent restarted with a clean slate never leaves a stale drain behind. Pure: no I/O.
 */

export interface AgentCheckReply {
  readonly operational: "up" | "down" | null;
  readonly admin: "ready" | "drain" | "maint";
  /** Share of the configured weight, 0 to 100. */
  readonly share: number;
  /** The text after `#`, trimmed; empty when there is none. */
  readonly description: string;
  /** Words that were not understood, for the log. */
  readonly ignored: readonly string[];
}

/** Parses one reply line (without or with its line ending). */
export function parseAgentCheckReply(line: string): AgentCheckReply {
  const hash = line.indexOf("#");
  const words = (hash < 0 ? line : line.slice(0, hash)).toLowerCase().split(/[\s,]+/).filter((w) => w !== "");
  const description = hash < 0 ? "" : line.slice(hash + 1).trim();
  let operational: AgentCheckReply["operational"] = null;
  let admin: AgentCheckReply["admin"] = "ready";
  let share = 100;
  const ignored: string[] = [];
  for (const word of words) {
    const percent = /^(\d{1,9})%$/.exec(word);
    if (percent) {
      share = Math.min(100, Number(percent[1]));
    } else if (word === "up") {
      operational = "up";
    } else if (word === "down" || word === "fail" || word === "stopped") {
      operational = "down";
    } else if (word === "ready" || word === "drain" || word === "maint") {
      admin = word;
    } else if (!/^maxconn:\d+$/.test(word)) {
      ignored.push(word);
    }
  }
  return { operational, admin, share, description, ignored };
}
