/**
 * What the manager keeps of one agent with a claim: who it is, where its mesh port is, its last heartbeat
 * and the counts it reported, and the state versions sent to it and acknowledged. The cluster port fills
 * it (`cluster_server.ts`); the role, the admin API, the history and `/metrics` read it.
 */
import type { ConnectionCounts } from "../cluster/protocol.ts";

export interface AgentSession {
  readonly id: string;
  readonly mesh: string | null;
  readonly remote: string;
  readonly joinedAt: number;
  lastHeartbeat: number;
  ackedVersion: number;
  /** The version of the last state or delta sent to it; deltas are sent only from this version on. */
  sentVersion: number;
  connections: ConnectionCounts;
}
