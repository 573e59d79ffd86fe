/**
 * The agent alone: a fake link to the manager and a fake data plane in place of the real ones
 * (`AgentOptions.seams`), so that what the agent decides (placements, answers, counts, what it tells the
 * manager, drain) is seen call by call, with no socket or process.
 */
import assert from "node:assert/strict";
import { claimOwners } from "../cluster/claims.ts";
import { claimantOf, placeHash } from "../cluster/placement.ts";
import type { Lane } from "../cluster/lanes.ts";
import type { ClusterState, QueueUsed } from "../cluster/protocol.ts";
import { type Config, parseConfig } from "../manager/config.ts";
import { ClusterModel } from "../manager/state.ts";
import { Agent, AGENT_DEFAULTS } from "./agent.ts";
import {
  type DataPlane,
  type DataPlaneEvents,
  EVENT_FIELDS,
  FlowEvent,
  type Headers,
  noCounters,
  type PlacementRequest,
  type PlaneService,
  type Target,
} from "./data_plane.ts";
import type { AgentLink, Decision, LinkReport, ManagerLinkOptions } from "./manager_link.ts";
import type { Decisions } from "./queued_decisions.ts";

const A = "10.0.0.11:80";
const B = "10.0.0.12:80";

/** The state a manager with this service (and these agents) sends: its real snapshot. */
function stateOf(service: Record<string, unknown>, agents: Array<{ id: string; mesh: string | null }> = []) {
  const parsed = parseConfig(JSON.stringify({
    manager: { tokens: { cluster: "cluster-secret" } },
    services: [{ name: "web", listen: "127.0.0.1:8080", backends: [A, B], ...service }],
  }));
  assert.deepEqual(parsed.problems, []);
  const model = new ClusterModel(parsed.config as Config, { seed: 7 });
  try {
    model.setAgents(agents);
    return model.snapshot();
  } finally {
    model.close();
  }
}

/** A data plane that records what it is told and lets the test speak for it. */
class FakePlane implements DataPlane {
  readonly kind = "fake";
  readonly listened: PlaneService[] = [];
  /** Each `update`: the service's index and how it is served from then on. */
  readonly updates: Array<{ index: number; service: PlaneService }> = [];
  readonly decisions: Array<{ index: number; decisions: Decisions }> = [];
  readonly answers: Array<{ request: PlacementRequest; targets: readonly Target[]; headers: Headers }> = [];
  readonly unlistened: number[] = [];
  readonly ended: number[] = [];
  constructor(readonly events: DataPlaneEvents) {}

  listen(service: PlaneService): Promise<{ index: number; port: number }> {
    this.listened.push(service);
    return Promise.resolve({ index: this.listened.length - 1, port: 40_000 + this.listened.length });
  }
  unlisten(index: number): Promise<void> {
    this.unlistened.push(index);
    return Promise.resolve();
  }
  endFlows(index: number): void {
    this.ended.push(index);
  }
  update(index: number, service: PlaneService): void {
    this.updates.push({ index, service });
  }
  setDecisions(index: number, decisions: Decisions): void {
    this.decisions.push({ index, decisions });
  }
  placed(request: PlacementRequest, targets: readonly Target[], headers: Headers): void {
    this.answers.push({ request, targets, headers });
  }
  counters() {
    return Promise.resolve({ ...noCounters(), open: 0 });
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }

  /** Flows connected and not ended, as `tell` counted them. */
  open = 0;

  /** Flow events as the plane tells them: [kind, service, slot, generation, choice, errno] each. */
  tell(...events: number[][]): void {
    assert.ok(events.every((event) => event.length === EVENT_FIELDS));
    for (const [kind] of events) {
      if (kind === FlowEvent.CONNECTED) this.open++;
      if (kind === FlowEvent.ENDED) this.open--;
    }
    this.events.flows(events.flat(), noCounters(), this.open);
  }
}

/** A link to no manager: decisions as the test says, and what the agent sends, recorded. */
class FakeLink implements AgentLink {
  connected = true;
  readonly manager = { host: "127.0.0.1", port: 1 };
  readonly asked: Array<{ service: string; lane: string | undefined }> = [];
  readonly used: QueueUsed[][] = [];
  readonly openCounts: LinkReport["backends"][] = [];
  answer: Decision | null = null;
  constructor(readonly options: ManagerLinkOptions) {}

  start(): void {}
  close(): Promise<void> {
    this.connected = false;
    return Promise.resolve();
  }
  decide(service: string, _client: unknown, _timeoutMs: number, lane?: Lane) {
    this.asked.push({ service, lane });
    return Promise.resolve(this.answer);
  }
  sendUsed(queues: QueueUsed[]): void {
    this.used.push(queues);
  }
  sendOpenCounts(backends: LinkReport["backends"]): void {
    this.openCounts.push(backends);
  }
}

async function startAgent(state: ClusterState) {
  let plane: FakePlane | null = null;
  let link: FakeLink | null = null;
  const agent = new Agent({
    id: "edge-1",
    managers: [{ host: "127.0.0.1", port: 1 }],
    token: "cluster-secret",
    dataPath: "epoll",
    seams: {
      link: (options) => link = new FakeLink(options),
      openPlane: (events) => Promise.resolve(plane = new FakePlane(events)),
    },
  });
  await agent.start();
  link!.options.onState(state);
  // The listener opens in a later turn.
  await new Promise((resolve) => setTimeout(resolve, 0));
  return { agent, plane: plane!, link: link! };
}

const request = (slot: number, handedOffBy?: string): PlacementRequest => ({
  service: 0,
  slot,
  generation: 1,
  client: { ip: "192.0.2.1", port: 50_000 + slot },
  destination: { ip: "127.0.0.1", port: 8080 },
  ...(handedOffBy ? { handedOffBy } : {}),
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test("a state's service is listened for with its placement and settings, and a new state's table and settings reach the plane", async () => {
  const { agent, plane, link } = await startAgent(stateOf({ decide: "agent" }));
  try {
    assert.equal(plane.listened.length, 1);
    const { placement } = plane.listened[0]!;
    assert.deepEqual(placement.backends, [{ host: "10.0.0.11", port: 80 }, { host: "10.0.0.12", port: 80 }]);
    assert.equal(placement.askBuckets, null, "decide: agent, alone: nothing to ask");
    assert.equal(placement.decided, false);
    assert.equal(plane.listened[0]!.askTimeoutMs, 20 + AGENT_DEFAULTS.askGraceMs, "decision_timeout + grace");
    const before = plane.updates.length;
    link.options.onState(stateOf({
      decide: "agent",
      backends: [{ address: A, weight: 100 }, { address: B, weight: 0 }],
      // A reload that changes the settings of a service on the same address: the listener stays.
      timeouts: { connect: "300ms", idle: "7s" },
      limits: { max_connections: 3 },
      proxy_protocol: "v2",
      decision_timeout: "50ms",
    }));
    const last = plane.updates.at(-1)!;
    assert.ok(plane.updates.length > before);
    assert.equal(plane.listened.length, 1);
    assert.ok(last.service.placement.table.every((entry) => entry === 0), "B at weight 0 holds no slot");
    assert.deepEqual(
      [
        last.service.connectTimeoutMs,
        last.service.idleTimeoutMs,
        last.service.maxConnections,
        last.service.proxyProtocol,
        last.service.askTimeoutMs,
      ],
      [300, 7_000, 3, "v2", 50 + AGENT_DEFAULTS.askGraceMs],
    );
  } finally {
    await agent.close();
  }
});

Deno.test("decide: manager decided ahead: the plane takes queues; an ask names its lane and gets the decision first", async () => {
  const { agent, plane, link } = await startAgent(stateOf({ decide: "manager" }));
  try {
    assert.equal(plane.listened[0]!.placement.decided, true);
    assert.equal(plane.listened[0]!.placement.askBuckets, null, "alone, the agent claims every flow");
    // The queue is empty: the plane asks, and the agent asks the manager naming the lane to refill.
    link.answer = { backend: B, ttlMs: 0 };
    plane.events.place(request(1));
    await sleep(0);
    assert.deepEqual(link.asked, [{ service: "web", lane: "listen" }]);
    assert.deepEqual(plane.answers[0]!.targets[0], 1, "B first");
    // A queue of decisions made ahead goes to the plane, by index, when made for the state served.
    const version = agent.state!.version;
    link.options.onAhead({
      type: "ahead",
      service: "web",
      lane: "listen",
      seq: 5,
      version,
      backends: [0, 1, 0, 0],
      ttlMs: 1_000,
    });
    link.options.onAhead({
      type: "ahead",
      service: "web",
      lane: "listen",
      seq: 6,
      version: version + 1,
      backends: [1],
      ttlMs: 1_000,
    });
    assert.equal(plane.decisions.length, 1, "a queue made for another version is dropped");
    assert.deepEqual([...plane.decisions[0]!.decisions.backends], [0, 1, 0, 0]);
    // The plane took two, then four: the manager is told at once of half a queue, later of the rest.
    plane.tell([FlowEvent.DECIDED, 0, -1, 5, 2, 0]);
    assert.deepEqual(link.used, [[{ service: "web", seq: 5, used: 2, lane: "listen" }]]);
    plane.tell([FlowEvent.DECIDED, 0, -1, 5, 3, 0]);
    assert.equal(link.used.length, 1);
    await sleep(AGENT_DEFAULTS.usedBatchMs + 20);
    assert.deepEqual(link.used[1], [{ service: "web", seq: 5, used: 3, lane: "listen" }]);
    assert.equal(agent.counters.decisions, 1 + 3);
    // A new queue replaces it; the plane tells the last use of the old one as it takes the new one, and the
    // manager hears of both.
    link.options.onAhead({
      type: "ahead",
      service: "web",
      lane: "listen",
      seq: 7,
      version,
      backends: [1, 1],
      ttlMs: 1_000,
    });
    assert.equal(plane.decisions.length, 2);
    plane.tell([FlowEvent.DECIDED, 0, -1, 5, 4, 0], [FlowEvent.DECIDED, 0, -1, 7, 1, 0]);
    assert.deepEqual(link.used.slice(2), [
      [{ service: "web", seq: 5, used: 4, lane: "listen" }],
      [{ service: "web", seq: 7, used: 1, lane: "listen" }],
    ]);
    assert.equal(agent.counters.decisions, 1 + 4 + 1);
    // A new state of the service (a weight changed): the manager took its queues back on publishing it, and
    // the plane takes from none until the next comes.
    link.options.onState(stateOf({
      decide: "manager",
      backends: [{ address: A, weight: 100 }, { address: B, weight: 50 }],
    }));
    assert.equal(plane.decisions.at(-1)!.decisions.backends.length, 0);
  } finally {
    await agent.close();
  }
});

Deno.test("without the manager's answer the table's order is the answer, and the fallback is counted", async () => {
  const { agent, plane, link } = await startAgent(stateOf({ decide: "manager", decide_ahead: "0s" }));
  try {
    assert.equal(plane.listened[0]!.placement.decided, false);
    assert.ok(plane.listened[0]!.placement.askBuckets!.every((ask) => ask === 1), "every flow is asked");
    link.answer = null;
    plane.events.place(request(3));
    await sleep(0);
    assert.deepEqual(link.asked, [{ service: "web", lane: undefined }], "decide_ahead 0s names no lane");
    assert.equal(plane.answers[0]!.targets.length, 2);
    assert.equal(agent.counters.decisionFallbacks, 1);
  } finally {
    await agent.close();
  }
});

Deno.test("a flow the plane placed by the table when its answer came too late counts under the table's backend, answered before or after", async () => {
  const { agent, plane, link } = await startAgent(stateOf({ decide: "manager", decide_ahead: "0s" }));
  try {
    // The manager says B, which the answer puts first; the plane placed the flows by the table: choice 0 is A.
    link.answer = { backend: B, ttlMs: 0 };
    plane.events.place(request(1));
    plane.tell([FlowEvent.ASK_TIMED_OUT, 0, 1, 1, -1, 0]);
    await sleep(0);
    plane.events.place(request(2));
    await sleep(0);
    assert.deepEqual(plane.answers[1]!.targets[0], 1, "the answer names B first");
    plane.tell([FlowEvent.ASK_TIMED_OUT, 0, 2, 1, -1, 0]);
    plane.tell([FlowEvent.CONNECTED, 0, 1, 1, 0, 0], [FlowEvent.CONNECTED, 0, 2, 1, 0, 0]);
    assert.equal(agent.counters.decisionFallbacks, 2);
    assert.equal(agent.openConnections, 2);
    await sleep(AGENT_DEFAULTS.openCountsBatchMs + 20);
    assert.deepEqual(link.openCounts.at(-1), [{ service: "web", backend: A, open: 2 }]);
    plane.tell([FlowEvent.ENDED, 0, 1, 1, 0, 0], [FlowEvent.ENDED, 0, 2, 1, 0, 0]);
    await sleep(AGENT_DEFAULTS.openCountsBatchMs + 20);
    assert.deepEqual(link.openCounts.at(-1), []);
    assert.equal(agent.openConnections, 0);
  } finally {
    await agent.close();
  }
});

Deno.test("a flow another agent claims goes to its mesh port first, then to the backends", async () => {
  const agents = [{ id: "edge-1", mesh: null }, { id: "edge-2", mesh: "127.0.0.1:7001" }];
  const state = stateOf({ decide: "agent" }, agents);
  const { agent, plane } = await startAgent(state);
  try {
    const owners = claimOwners(agents.map((each) => each.id));
    let slot = 0;
    for (;; slot++) {
      const flow = request(slot);
      const place = placeHash("flow", flow.client, flow.destination, state.seed);
      if (claimantOf(owners, place) === 1) break;
    }
    plane.events.place(request(slot));
    await sleep(20);
    const answer = plane.answers[0]!;
    assert.deepEqual(answer.targets[0], { host: "127.0.0.1", port: 7001 });
    assert.equal(answer.targets.length, 3);
    plane.tell([FlowEvent.CONNECTED, 0, slot, 1, 0, 0]);
    assert.equal(agent.counters.handedOff, 1);
    assert.equal(agent.counters.served, 0);
  } finally {
    await agent.close();
  }
});

Deno.test("flows the plane places alone are counted, and the manager learns the open counts", async () => {
  const { agent, plane, link } = await startAgent(stateOf({ decide: "agent" }));
  try {
    plane.tell([FlowEvent.CONNECTED, 0, 1, 1, 0, 0], [FlowEvent.CONNECTED, 0, 2, 1, 1, 0]);
    assert.equal(agent.counters.served, 2);
    assert.equal(agent.openConnections, 2);
    await sleep(AGENT_DEFAULTS.openCountsBatchMs + 20);
    assert.deepEqual(
      link.openCounts.at(-1)!.sort((a, b) => a.backend.localeCompare(b.backend)),
      [{ service: "web", backend: A, open: 1 }, { service: "web", backend: B, open: 1 }],
    );
    plane.tell([FlowEvent.ENDED, 0, 1, 1, 0, 0]);
    await sleep(AGENT_DEFAULTS.openCountsBatchMs + 20);
    assert.deepEqual(link.openCounts.at(-1), [{ service: "web", backend: B, open: 1 }]);
    assert.equal(agent.openConnections, 1);
  } finally {
    await agent.close();
  }
});

Deno.test("a drain stops accepting, leaves the manager, and ends the flows left after the service's drain", async () => {
  const { agent, plane, link } = await startAgent(
    stateOf({ decide: "agent", timeouts: { connect: "1s", idle: "1m", drain: "100ms" } }),
  );
  plane.tell([FlowEvent.CONNECTED, 0, 1, 1, 0, 0]);
  const draining = agent.drain();
  await sleep(0);
  assert.deepEqual(plane.unlistened, [0]);
  assert.equal(link.connected, false);
  await sleep(200);
  assert.ok(plane.ended.includes(0), "its flows ended after 100 ms");
  // The plane tells the end of the flow it was asked to end.
  plane.tell([FlowEvent.ENDED, 0, 1, 1, 0, 0]);
  await draining;
  assert.equal(agent.openConnections, 0);
});
