/**
 * The three places that place a flow agree on it: the agent (endpoints as text), the relay's worker
 * (endpoints as the kernel's socket addresses) and the manager's `/v1/explain`, over thousands of flows.
 */
import assert from "node:assert/strict";
import { CLAIM_BUCKETS, claimOwners, NO_AGENT } from "../cluster/claims.ts";
import { backendOrder, claimantOf, placeFlow, placeHash, placeHashOfBytes } from "../cluster/placement.ts";
import { encodeAddress, ipOfAddress, portOfAddress } from "../agent/relay/sockaddr.ts";
import { parseConfig } from "../manager/config.ts";
import { Decider } from "../manager/decide.ts";
import { explainFlow } from "../manager/explain.ts";
import { ClusterModel } from "../manager/state.ts";
import { Rng } from "./_fuzz.ts";

const SEED = 0x5eed;
const AGENTS = [{ id: "edge-1", mesh: "10.0.1.1:7946" }, { id: "edge-2", mesh: "10.0.1.2:7946" }, {
  id: "edge-3",
  mesh: null,
}];

function modelOf(affinity: "none" | "client_ip"): ClusterModel {
  const parsed = parseConfig(JSON.stringify({
    manager: { tokens: { cluster: "cluster-secret" } },
    services: [{
      name: "web",
      listen: "0.0.0.0:8080",
      decide: "agent",
      affinity: affinity === "client_ip" ? { key: affinity, ttl: "30s" } : { key: affinity, ttl: "0s" },
      backends: [
        { address: "10.0.0.11:80", weight: 100 },
        { address: "10.0.0.12:80", weight: 50 },
        { address: "10.0.0.13:80", weight: 200 },
        { address: "[2001:db8::14]:80", weight: 100 },
      ],
    }],
  }));
  assert.deepEqual(parsed.problems, []);
  return new ClusterModel(parsed.config!, { seed: SEED });
}

function randomIp(rng: Rng): string {
  const kind = rng.int(0, 2);
  if (kind === 0) return `${rng.int(1, 223)}.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(0, 255)}`;
  if (kind === 1) return `::ffff:${rng.int(1, 223)}.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)}`;
  const groups = Array.from({ length: 8 }, () => rng.int(0, 0xffff).toString(16));
  groups[0] = "2001";
  return groups.join(":");
}

for (const affinity of ["none", "client_ip"] as const) {
  Deno.test(`the agent, the relay's worker and /v1/explain place 5,000 random flows alike (affinity ${affinity})`, () => {
    const model = modelOf(affinity);
    const decider = new Decider(model);
    const service = model.service("web")!;
    const owners = claimOwners(AGENTS.map((agent) => agent.id));
    const placeBy = affinity === "client_ip" ? "client_ip" : "flow";
    // The placement the agent edge-1 posts to its relay: the buckets of agents with a mesh port are asked.
    const askBuckets = new Uint8Array(CLAIM_BUCKETS).map((_, bucket) => {
      const owner = AGENTS[owners[bucket]!]!;
      return owner.id !== "edge-1" && owner.mesh !== null ? 1 : 0;
    });
    const placement = {
      backends: service.backends.map((backend) => backend.config.address),
      table: service.table,
      seed: SEED,
      placeBy,
      askBuckets,
    } as const;
    const rng = new Rng(20261207);
    const claimants = new Set<string>();
    for (let i = 0; i < 5_000; i++) {
      const client = { ip: randomIp(rng), port: rng.int(1, 65535) };
      const destination = { ip: rng.int(0, 1) === 0 ? "10.0.2.1" : "2001:db8::1", port: 8080 };

      // The agent: endpoints as text.
      const place = placeHash(placeBy, client, destination, SEED);
      const owner = claimantOf(owners, place);
      assert.notEqual(owner, NO_AGENT);
      const order = backendOrder(service.table, place, service.backends.length);

      // The relay's worker: endpoints as socket addresses.
      const clientAddress = encodeAddress({ host: client.ip, port: client.port });
      const destinationAddress = encodeAddress({ host: destination.ip, port: destination.port });
      const relayPlace = placeHashOfBytes(
        placeBy,
        { ip: ipOfAddress(clientAddress), port: portOfAddress(clientAddress) },
        { ip: ipOfAddress(destinationAddress), port: portOfAddress(destinationAddress) },
        SEED,
      );
      assert.equal(relayPlace, place, `flow ${i} from ${client.ip}:${client.port}`);
      const relayOrder = placeFlow(placement, relayPlace);
      const claimant = AGENTS[owner]!;
      if (claimant.id !== "edge-1" && claimant.mesh !== null) assert.equal(relayOrder, null);
      else assert.deepEqual(relayOrder, order);

      // The manager's explain.
      const explained = explainFlow({ model, decider, agents: AGENTS, seed: SEED }, {
        service: "web",
        client: client.ip.includes(":") ? `[${client.ip}]:${client.port}` : `${client.ip}:${client.port}`,
        serviceAddress: destination.ip.includes(":")
          ? `[${destination.ip}]:${destination.port}`
          : `${destination.ip}:${destination.port}`,
      });
      assert.equal(explained.flow_hash, place);
      assert.equal(explained.claim.agent, claimant.id);
      const ids = order.map((index) => service.tableIds[index]!);
      assert.equal(explained.table.backend, ids[0]);
      assert.deepEqual(explained.table.fallbacks, ids);
      claimants.add(claimant.id);
    }
    assert.equal(claimants.size, 3, "every agent claimed some of the flows");
    model.close();
  });
}
