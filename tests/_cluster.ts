/**
 * A cluster for end-to-end tests: one manager and N agents as real processes on loopback, and helpers to
 * ask the admin API and to connect through the agents (the backends are in `_backends.ts`).
 */
import net from "node:net";
import { ADMIN_TOKEN, CLUSTER_TOKEN, testConfig } from "./_config.ts";
import { parseMetrics } from "./_prometheus.ts";
import { claimsSplit, eventually, type Proc, startAgentProcess, startManagerProcess } from "./_helpers.ts";

export interface AgentProc {
  id: string;
  proc: Proc;
  port: number;
  args: string[];
}

export interface TestCluster {
  readonly dir: string;
  manager: Proc;
  admin: string;
  cluster: string;
  readonly agents: AgentProc[];
  api<T>(path: string, init?: RequestInit): Promise<T>;
  startAgent(id: string, extra?: string[]): Promise<AgentProc>;
  restartManager(): Promise<void>;
  close(): Promise<void>;
}

export async function startTestCluster(
  options: {
    services: Record<string, unknown>[];
    agents: number;
    cluster?: string;
    heartbeat?: string;
    agentArgs?: (id: string, dir: string) => string[];
    /** `manager.tokens.feedback`: tokens that may report for the services named. */
    feedbackTokens?: Array<{ token: string; services: string[] }>;
    /** PEM text for manager.tls (written to the cluster's folder); the API is then called over https. */
    tls?: { cert: string; key: string; ca: string };
  },
): Promise<TestCluster> {
  const dir = await Deno.makeTempDir({ prefix: "switchyard-cluster-" });
  await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
  if (options.tls) {
    await Deno.writeTextFile(`${dir}/cert.pem`, options.tls.cert);
    await Deno.writeTextFile(`${dir}/key.pem`, options.tls.key);
    await Deno.writeTextFile(`${dir}/ca.pem`, options.tls.ca);
  }
  const client = options.tls ? Deno.createHttpClient({ caCerts: [options.tls.ca] }) : null;
  const scheme = options.tls ? "https" : "http";
  const yaml = testConfig({
    services: options.services,
    ...(options.heartbeat ? { heartbeat: options.heartbeat } : {}),
    manager: {
      ...(options.cluster ? { cluster: options.cluster } : {}),
      ...(options.tls ? { tls: { cert: "cert.pem", key: "key.pem" } } : {}),
      tokens: options.feedbackTokens ? { feedback: options.feedbackTokens } : {},
    },
  });
  const started = await startManagerProcess(dir, yaml);
  const firstService = String(options.services[0]?.name);
  const cluster: TestCluster = {
    dir,
    manager: started.proc,
    admin: started.admin,
    cluster: started.cluster,
    agents: [],
    async api<T>(path: string, init: RequestInit = {}): Promise<T> {
      const response = await fetch(`${scheme}://${cluster.admin}${path}`, {
        ...init,
        ...(client ? { client } : {}),
        headers: {
          authorization: `Bearer ${ADMIN_TOKEN}`,
          "content-type": "application/json",
          ...init.headers,
        },
      });
      const body = await response.json();
      if (!response.ok) throw new Error(`${path} answered ${response.status}: ${JSON.stringify(body)}`);
      return body as T;
    },
    async startAgent(id: string, extra: string[] = []) {
      const args = ["--mesh", "127.0.0.1:0", ...(options.agentArgs?.(id, dir) ?? []), ...extra];
      const agent = await startAgentProcess({
        manager: cluster.cluster,
        tokenFile: `${dir}/cluster.token`,
        id,
        service: firstService,
        extra: args,
      });
      const entry = { id, proc: agent.proc, port: agent.port, args };
      const index = cluster.agents.findIndex((a) => a.id === id);
      if (index >= 0) cluster.agents[index] = entry;
      else cluster.agents.push(entry);
      return entry;
    },
    async restartManager() {
      const again = await startManagerProcess(dir, yaml);
      cluster.manager = again.proc;
      cluster.admin = again.admin;
      cluster.cluster = again.cluster;
    },
    async close() {
      await Promise.all(cluster.agents.map((agent) => agent.proc.stop()));
      await cluster.manager.stop();
      client?.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
  for (let i = 1; i <= options.agents; i++) await cluster.startAgent(`agent-${i}`);
  return cluster;
}

/** Connects (optionally from a given loopback source address), reads the first line, and returns it with the socket. */
export async function connectAndReadLine(port: number, options: { localAddress?: string } = {}) {
  const socket = net.connect({
    host: "127.0.0.1",
    port,
    ...(options.localAddress ? { localAddress: options.localAddress } : {}),
  });
  const line = await new Promise<string>((resolve, reject) => {
    let text = "";
    const onData = (chunk: Uint8Array) => {
      text += new TextDecoder().decode(chunk);
      const end = text.indexOf("\n");
      if (end >= 0) {
        socket.off("data", onData);
        resolve(text.slice(0, end));
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
    socket.once("end", () => resolve(text));
  });
  return {
    line,
    localPort: socket.localPort ?? 0,
    close: () =>
      new Promise<void>((resolve) => {
        if (socket.destroyed) return resolve();
        socket.once("close", () => resolve());
        socket.destroy();
      }),
  };
}

/** One unlabelled figure from an agent's `--admin` `/metrics` (NaN when absent). */
export async function agentMetric(admin: string, name: string): Promise<number> {
  const series = parseMetrics(await (await fetch(`http://${admin}/metrics`)).text());
  return series.find((s) => s.name === name && Object.keys(s.labels).length === 0)?.value ?? NaN;
}

/**
 * Opens `count` connections through `port` (or through each of several ports in turn), `concurrency` at a
 * time, and counts the first line each gets.
 */
export async function spread(
  port: number | readonly number[],
  count: number,
  concurrency = 50,
): Promise<Map<string, number>> {
  const ports = typeof port === "number" ? [port] : port;
  const tally = new Map<string, number>();
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const conn = await connectAndReadLine(ports[next++ % ports.length]!);
      tally.set(conn.line, (tally.get(conn.line) ?? 0) + 1);
      await conn.close();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return tally;
}

/** Waits until the manager lists `count` agents in `/v1/agents`. */
export async function agentsListed(cluster: Pick<TestCluster, "api">, count: number): Promise<void> {
  await eventually(
    async () =>
      (await cluster.api<{ agents: unknown[] }>("/v1/agents").catch(() => ({ agents: [] }))).agents.length ===
        count,
    10_000,
    `${count} agents in /v1/agents`,
  );
}

/** Waits until the manager lists `count` agents and every agent of `cluster` knows the claims of that many. */
export async function agentsJoined(cluster: TestCluster, count: number): Promise<void> {
  await agentsListed(cluster, count);
  await claimsSplit(cluster.agents.map((agent) => agent.proc), count);
}

/**
 * Waits until every agent has acknowledged the manager's current state; returns `/v1/services` as of then.
 * `cluster` is anything that reads the manager's admin API with the admin token.
 */
export async function agentsCaughtUp<T extends { version: number }>(
  cluster: Pick<TestCluster, "api">,
): Promise<T> {
  const deadline = performance.now() + 10_000;
  for (;;) {
    const view = await cluster.api<T>("/v1/services");
    const { agents } = await cluster.api<{ agents: Array<{ state_version: number }> }>("/v1/agents");
    if (agents.length > 0 && agents.every((agent) => agent.state_version >= view.version)) return view;
    if (performance.now() > deadline) {
      throw new Error("Timed out waiting for the agents to serve the manager's state");
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
