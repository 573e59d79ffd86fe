/**
 * `switchyard demo`: the embedded default. In one process it starts a manager, two agents sharing the
 * service port with `reusePort`, and three demo HTTP backends on loopback, makes the tokens it needs,
 * prints what to try, and runs until Ctrl-C or `--duration`. Each demo backend reports its load to the
 * manager every second with a feedback token scoped to service `web`, so the dashboard's weights move.
 */
import { installLastResort } from "../cluster/guard.ts";
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { logger } from "../cluster/log.ts";
import { Agent } from "../agent/agent.ts";
import { parseConfig } from "../manager/config.ts";
import { randomToken, startManager } from "../manager/manager.ts";
import { type DemoBackend, startDemoBackend } from "./backend.ts";

const log = logger("demo");

export const DEMO_DEFAULTS = {
  listen: { host: "127.0.0.1", port: 8080 },
  admin: { host: "127.0.0.1", port: 9090 },
  backends: ["demo-a", "demo-b", "demo-c"],
  agents: ["demo-agent-1", "demo-agent-2"],
  readyTimeoutMs: 10_000,
} as const;

export interface DemoOptions {
  readonly durationS: number | null;
  readonly listen: HostPort;
  readonly admin: HostPort;
}

export interface Demo {
  readonly adminUrl: string;
  readonly serviceAddr: HostPort;
  readonly adminToken: string;
  readonly backends: readonly DemoBackend[];
  readonly agents: readonly Agent[];
  close(): Promise<void>;
}

/** Starts every part of the demo and resolves once the agents listen. */
export async function startDemo(options: Omit<DemoOptions, "durationS">): Promise<Demo> {
  const backends = DEMO_DEFAULTS.backends.map((name) => startDemoBackend(name));
  const adminToken = randomToken();
  const clusterToken = randomToken();
  const feedbackToken = randomToken();
  const yaml = JSON.stringify({
    manager: {
      admin: formatHostPort(options.admin),
      cluster: "127.0.0.1:0",
      tokens: {
        admin: adminToken,
        cluster: clusterToken,
        feedback: [{ token: feedbackToken, services: ["web"] }],
      },
    },
    agents: { heartbeat: "1s" },
    services: [{
      name: "web",
      listen: formatHostPort(options.listen),
      decide: "agent",
      health: { kind: "http", path: "/", interval: "2s", timeout: "1s" },
      timeouts: { connect: "1s", idle: "60s", drain: "5s" },
      backends: backends.map((backend) => ({ address: `127.0.0.1:${backend.addr.port}`, weight: 100 })),
    }],
  });
  const parsed = parseConfig(yaml);
  if (parsed.config === null) {
    throw new Error(`The demo config is invalid: ${parsed.problems.map((p) => p.message).join("; ")}`);
  }
  const manager = await startManager(parsed.config);
  const managerUrl = `http://${
    formatHostPort({ host: reachable(options.admin.host), port: manager.adminAddr.port })
  }`;
  backends.forEach((backend, index) =>
    backend.startFeedback({
      url: managerUrl,
      token: feedbackToken,
      service: "web",
      backend: `127.0.0.1:${backend.addr.port}`,
      phase: (2 * Math.PI * index) / backends.length,
    })
  );
  // Each agent takes handed-off flows on a mesh port of its own: a flow the kernel gives the agent that
  // does not claim it is relayed to the one that does, as across machines.
  const agents = DEMO_DEFAULTS.agents.map((id) =>
    new Agent({
      id,
      managers: [{ host: "127.0.0.1", port: manager.clusterAddr.port }],
      token: clusterToken,
      mesh: { host: "127.0.0.1", port: 0 },
    })
  );
  for (const agent of agents) await agent.start();
  const close = async () => {
    await Promise.all(agents.map((agent) => agent.close()));
    await Promise.all(backends.map((backend) => backend.close()));
    await manager.close();
  };
  const deadline = performance.now() + DEMO_DEFAULTS.readyTimeoutMs;
  while (!agents.every((agent) => agent.listenAddrs().has("web"))) {
    const refused = agents.map((agent) => agent.listenErrors().get("web")).find((error) =>
      error !== undefined
    );
    if (refused !== undefined) {
      await close();
      throw new Error(refused);
    }
    if (performance.now() > deadline) {
      await close();
      throw new Error(`The demo agents could not listen on ${formatHostPort(options.listen)} within 10 s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    adminUrl: `http://${formatHostPort(options.admin)}`,
    serviceAddr: options.listen,
    adminToken,
    backends,
    agents,
    close,
  };
}

/** An address to reach a listener bound to `host` from this machine: loopback for a wildcard. */
function reachable(host: string): string {
  if (host === "0.0.0.0" || host === "") return "127.0.0.1";
  if (host === "::" || host === "[::]") return "::1";
  return host;
}

/** Runs the demo for `durationS` seconds, or until SIGINT/SIGTERM. */
export async function runDemo(options: DemoOptions): Promise<number> {
  const demo = await startDemo(options);
  const service = `http://${formatHostPort(demo.serviceAddr)}/`;
  console.log(
    `switchyard demo is running: one manager, ${demo.agents.length} agents, ${demo.backends.length} backends.

  Service web:   ${service}            try: curl ${service}
                 (each backend answers with its name: ${demo.backends.map((b) => b.name).join(", ")})
  Dashboard:     ${demo.adminUrl}/   (the backends report their load every second: watch the weights move)
  Admin token:   ${demo.adminToken}
  Services:      curl -H 'Authorization: Bearer ${demo.adminToken}' ${demo.adminUrl}/v1/services
  Agents:        curl -H 'Authorization: Bearer ${demo.adminToken}' ${demo.adminUrl}/v1/agents
                 (both agents accept on the service port; each hands the flows the other claims to it)
  Drain one:     curl -X POST -H 'Authorization: Bearer ${demo.adminToken}' -d '{"state":"drain"}' \\
                   ${demo.adminUrl}/v1/services/web/backends/127.0.0.1:${demo.backends[0]?.addr.port}/state

Press Ctrl-C to stop.`,
  );
  const forget = installLastResort();
  const stop = Promise.withResolvers<void>();
  const timer = options.durationS === null
    ? undefined
    : setTimeout(() => stop.resolve(), options.durationS * 1000);
  const onSignal = () => stop.resolve();
  Deno.addSignalListener("SIGINT", onSignal);
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", onSignal);
  await stop.promise;
  clearTimeout(timer);
  Deno.removeSignalListener("SIGINT", onSignal);
  if (Deno.build.os !== "windows") Deno.removeSignalListener("SIGTERM", onSignal);
  log.info("Stopping the demo");
  await demo.close();
  forget();
  return 0;
}
