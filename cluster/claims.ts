/**
 * Claims: how the flow-key hash space is split among the live agents. The space is cut into
 * `CLAIM_BUCKETS` buckets and each bucket belongs to the agent with the highest rendezvous score for it
 * (highest random weight hashing). Every agent computes the same owners from the same list of agent ids,
 * the buckets cover the space exactly once, and when an agent joins or leaves only its own buckets move.
 */
import { fmix32, hashString } from "./hash.ts";

export const CLAIM_BUCKETS = 16_384;
/** The owner of every bucket when there is no agent. */
export const NO_AGENT = 0xffff;

/**
 * The owning agent (an index into `agentIds`) of each bucket. Depends only on the set of ids, not on
 * their order. Ties (astronomically rare) go to the smaller id.
 */
export function claimOwners(agentIds: readonly string[], options: { buckets?: number } = {}): Uint16Array {
  const buckets = options.buckets ?? CLAIM_BUCKETS;
  if (agentIds.length > NO_AGENT) {
    throw new RangeError(`Cannot split claims among ${agentIds.length} agents: at most ${NO_AGENT}`);
  }
  if (new Set(agentIds).size !== agentIds.length) {
    throw new RangeError(`Cannot split claims: agent ids are not unique (${agentIds.join(", ")})`);
  }
  const owners = new Uint16Array(buckets).fill(NO_AGENT);
  const seeds = agentIds.map((id) => hashString(id, 0x636c6169));
  for (let bucket = 0; bucket < buckets; bucket++) {
    const salt = Math.imul(bucket + 1, 0x9e3779b1);
    let best = -1;
    let bestScore = -1;
    for (let agent = 0; agent < seeds.length; agent++) {
      const score = fmix32((seeds[agent] as number) ^ salt);
      if (
        score > bestScore || (score === bestScore && (agentIds[agent] as string) < (agentIds[best] as string))
      ) {
        best = agent;
        bestScore = score;
      }
    }
    if (best >= 0) owners[bucket] = best;
  }
  return owners;
}

/** The bucket of a flow hash (re-mixed, so it is independent of the backend table's slot). */
export function claimBucket(flowHash: number, buckets = CLAIM_BUCKETS): number {
  return fmix32(flowHash ^ 0x5bd1e995) % buckets;
}

/** Each agent's share of the hash space, 0..1, by index. */
export function claimShares(owners: Uint16Array, agentCount: number): number[] {
  const counts = new Array<number>(agentCount).fill(0);
  for (const owner of owners) {
    if (owner !== NO_AGENT) counts[owner] = (counts[owner] ?? 0) + 1;
  }
  return counts.map((count) => count / owners.length);
}
