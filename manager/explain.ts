/**
 * What the cluster would do with one flow: which agent claims it, which backend its table gives, which
 * backend the manager would decide on, and why. Pure: it reads the model and the decider, changes nothing.
 */
import { formatHostPort, parseHostPort } from "../cluster/address.ts";
import { CLAIM_BUCKETS, claimBucket, claimOwners, claimShares, NO_AGENT } from "../cluster/claims.ts";
import { ipBytes } from "../cluster/flow_key.ts";
import { NO_BACKEND } from "../cluster/maglev.ts";
import { backendOrder, claimantOf, placeHash, slotOf } from "../cluster/placement.ts";
import { decideAheadOf } from "./ahead.ts";
import type { Decider } from "./decide.ts";
import type { ClusterModel } from "./state.ts";

/** Each live agent's share of the flow-key hash space. */
export function agentClaims(agentIds: readonly string[]): Map<string, number> {
  const shares = claimShares(claimOwners(agentIds), agentIds.length);
  return new Map(agentIds.map((id, index) => [id, shares[index] ?? 0]));
}

export interface ExplainInput {
  readonly service: string;
  /** The client's `ip:port` (`[v6]:port` for IPv6). */
  readonly client: string;
  /** The address the client connects to; defaults to the service's listen address. */
  readonly serviceAddress?: string | undefined;
}

/** A bad explain request; `path` names the query parameter. */
export class ExplainError extends Error {
  constructor(message: string, readonly path: string, readonly status: 400 | 404 = 400) {
    super(message);
    this.name = "ExplainError";
  }
}

export function explainFlow(
  deps: {
    model: ClusterModel;
    decider: Decider;
    agents: readonly { id: string; mesh: string | null }[];
    seed: number;
  },
  input: ExplainInput,
) {
  const service = deps.model.service(input.service);
  if (!service) throw new ExplainError(`Unknown service "${input.service}"`, "service", 404);
  const parse = (text: string, path: string) => {
    try {
      const address = parseHostPort(text, { anyPort: true });
      ipBytes(address.host);
      return address;
    } catch (error) {
      throw new ExplainError(`Cannot use ${path} "${text}": ${(error as Error).message}`, path);
    }
  };
  const client = parse(input.client, "client");
  const destination = parse(input.serviceAddress ?? formatHostPort(service.config.listen), "service_address");
  const affinity = service.config.affinity.key === "client_ip";
  const place = placeHash(
    affinity ? "client_ip" : "flow",
    { ip: client.host, port: client.port },
    { ip: destination.host, port: destination.port },
    deps.seed,
  );

  const agentIds = deps.agents.map((agent) => agent.id);
  const bucket = claimBucket(place, CLAIM_BUCKETS);
  const owner = agentIds.length > 0 ? claimantOf(claimOwners(agentIds), place) : NO_AGENT;
  const claimant = owner === NO_AGENT ? null : deps.agents[owner] ?? null;

  const table = service.table;
  const slot = slotOf(table, place);
  const tableIndex = table.length > 0 ? table[slot] ?? NO_BACKEND : NO_BACKEND;
  const tableBackend = tableIndex === NO_BACKEND ? null : service.tableIds[tableIndex] ?? null;
  const fallbacks = backendOrder(table, place, service.backends.length).map((index) =>
    service.tableIds[index] ?? ""
  );
  const decision = deps.decider.preview(service.config.name, client.host);
  const managerDecides = service.config.decide === "manager";
  // With decide_ahead, the claimant takes the next of the decisions the manager made ahead for it.
  const aheadMs = decideAheadOf(service.config);
  const queue = aheadMs > 0 && claimant !== null
    ? deps.decider.ahead.queue(claimant.id, service.config.name)
    : null;
  const queued = queue !== null && queue.next !== null ? queue.next : null;
  const backend = managerDecides ? queued ?? decision.backend ?? tableBackend : tableBackend;

  const reasons: string[] = [];
  reasons.push(
    claimant === null
      ? "no agent is live, so no agent claims the flow"
      : `${
        affinity ? "the client address" : "the 5-tuple"
      } hashes to claim bucket ${bucket} of ${CLAIM_BUCKETS}, owned by agent ${claimant.id}`,
  );
  if (service.config.handoff === "claimant" && claimant !== null) {
    reasons.push(
      `an agent that accepts it and is not ${claimant.id} hands it off to ${
        claimant.mesh ?? "(no mesh port: served where accepted)"
      }`,
    );
  } else if (service.config.handoff === "local") {
    reasons.push("handoff is local: the agent that accepts it serves it");
  }
  if (!managerDecides) reasons.push(`decide is agent: table slot ${slot} gives ${tableBackend ?? "nothing"}`);
  else if (queued !== null) {
    reasons.push(
      `decide is manager, ${aheadMs} ms ahead: ${claimant!.id} takes the next of the ${
        queue!.left
      } decisions ` +
        `the manager made ahead for it (queue ${queue!.seq}), ${queued}, with no round trip`,
    );
  } else {
    reasons.push(
      `decide is manager${
        aheadMs > 0
          ? `, ${aheadMs} ms ahead, but the claimant holds no decision made ahead now, so it asks`
          : ""
      }: ${decision.reason}; without an answer within ${service.config.decisionTimeoutMs} ms the table gives ${
        tableBackend ?? "nothing"
      }`,
    );
  }
  return {
    service: service.config.name,
    client: formatHostPort(client),
    service_address: formatHostPort(destination),
    flow_hash: place,
    claim: { bucket, buckets: CLAIM_BUCKETS, agent: claimant?.id ?? null, mesh: claimant?.mesh ?? null },
    decide: service.config.decide,
    backend,
    decision: managerDecides
      ? { backend: decision.backend, ttl_ms: decision.ttlMs, reason: decision.reason }
      : null,
    decide_ahead_ms: aheadMs,
    /** The claimant's queue of decisions made ahead, when it holds one: the flow would take its next. */
    queued: queue === null || queued === null
      ? null
      : { agent: claimant!.id, seq: queue.seq, left: queue.left, backend: queued },
    table: { slot, backend: tableBackend, fallbacks },
    why: reasons.join("; "),
  };
}
