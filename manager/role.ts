/**
 * A manager's role among managers: `single` (no `manager.ha`: it alone decides), or, with several managers
 * elected through etcd, `leader` or `standby`. The cluster port asks it whether to take agents and decide,
 * and where to send agents otherwise; the admin API where writes go, and waits on it until they are stored
 * where a next leader finds them. `manager/ha/` fills it for several managers; `singleRole` for one.
 */
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import type { AgentSession } from "./agent_session.ts";

export type RoleName = "single" | "leader" | "standby";

/** A manager as `GET /v1/cluster` shows it. */
export interface ManagerRef {
  readonly id: string;
  readonly admin: string;
  readonly cluster: string;
}

/** Where a write (feedback, operator state, reload) goes. */
export type WriteTarget =
  | { readonly kind: "self" }
  | { readonly kind: "leader"; readonly leader: ManagerRef }
  | { readonly kind: "none" };

/** The body of `GET /v1/cluster`. */
export interface ClusterView {
  readonly role: RoleName;
  readonly id: string;
  readonly leader: ManagerRef | null;
  readonly managers: ReadonlyArray<
    ManagerRef & { role: "leader" | "standby" | "single"; config_version: string }
  >;
  readonly leader_changes: number;
  readonly ha: {
    readonly etcd: readonly string[];
    readonly prefix: string;
    readonly lease_s: number;
    /** Whether this manager heard from etcd within its lease. */
    readonly etcd_reachable: boolean;
  } | null;
}

export interface ManagerRole {
  role(): RoleName;
  /** Whether this manager may take agents, decide and take writes now. */
  leading(): boolean;
  /** The leader's cluster address for an agent this manager sends away; null when none is known. */
  leaderCluster(): string | null;
  writeTarget(): WriteTarget;
  /** Resolves once the feedback of these backends is stored for a next leader; rejects if it cannot be. */
  storeFeedback(backends: Iterable<{ service: string; backend: string }>): Promise<void>;
  /** Resolves once the operator state of this backend is stored for a next leader; rejects if it cannot be. */
  storeOperatorState(service: string, backend: string): Promise<void>;
  /** Sends a write this manager does not take to the leader; answers what the leader answered. */
  pass(request: Request, leader: ManagerRef): Promise<Response>;
  /** The agents with a claim: those connected here, or, on a standby, those the leader last stored. */
  agents(): AgentSession[];
  /** Changes of leader this manager has seen. */
  leaderChanges(): number;
  /** What this manager stored in etcd as leader: transactions etcd took, keys in them, failed ones. */
  stateWrites(): { transactions: number; keys: number; failures: number } | null;
  view(): ClusterView;
}

/** A manager's name among managers: its host name and process id. */
export function managerId(): string {
  let host = "manager";
  try {
    host = Deno.hostname();
  } catch {
    // no permission to read the host name
  }
  return `${host}-${Deno.pid}`;
}

/** The role of a manager without `manager.ha`: it leads, alone, and stores nothing elsewhere. */
export function singleRole(
  self: { id: string; admin: HostPort | string; cluster: HostPort | string },
  agents: () => AgentSession[],
): ManagerRole {
  const ref: ManagerRef = { id: self.id, admin: text(self.admin), cluster: text(self.cluster) };
  return {
    role: () => "single",
    leading: () => true,
    leaderCluster: () => ref.cluster,
    writeTarget: () => ({ kind: "self" }),
    storeFeedback: () => Promise.resolve(),
    storeOperatorState: () => Promise.resolve(),
    pass: () => Promise.reject(new Error("One manager alone passes no request on")),
    agents,
    leaderChanges: () => 0,
    stateWrites: () => null,
    view: () => ({
      role: "single",
      id: ref.id,
      leader: ref,
      managers: [{ ...ref, role: "single", config_version: "" }],
      leader_changes: 0,
      ha: null,
    }),
  };
}

function text(address: HostPort | string): string {
  return typeof address === "string" ? address : formatHostPort(address);
}
