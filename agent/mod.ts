/** The agent role as the command line starts it. */
import { formatHostPort, type HostPort } from "../cluster/address.ts";
import { installLastResort } from "../cluster/guard.ts";
import { logger } from "../cluster/log.ts";
import { UsageError } from "../cluster/usage.ts";
import { Agent, type DataPath } from "./agent.ts";
import { startAgentAdmin } from "./admin.ts";

export { Agent, type AgentOptions } from "./agent.ts";
export { startAgentAdmin } from "./admin.ts";

const log = logger("agent");

export interface RunAgentOptions {
  readonly managers: readonly HostPort[];
  readonly tokenFile: string;
  readonly id: string;
  readonly mesh: HostPort | null;
  readonly admin: HostPort | null;
  readonly stateDir: string | null;
  readonly caFile: string | null;
  readonly dataPath: DataPath;
}

/** `switchyard agent`: serves until SIGTERM/SIGINT, then drains for up to `timeouts.drain` and exits 0. */
export async function runAgent(options: RunAgentOptions): Promise<number> {
  const token = await readToken(options.tokenFile);
  let caCerts: string[] | null = null;
  if (options.caFile !== null) {
    try {
      caCerts = [await Deno.readTextFile(options.caFile)];
    } catch (error) {
      throw new UsageError(`Cannot read --ca-file "${options.caFile}": ${(error as Error).message}`);
    }
  }
  const agent = new Agent({
    id: options.id,
    managers: options.managers,
    token,
    mesh: options.mesh,
    stateDir: options.stateDir,
    tls: caCerts ? { caCerts } : null,
    dataPath: options.dataPath,
  });
  log.info("Agent {agent} starting; manager at {manager}", {
    agent: options.id,
    manager: options.managers.map(formatHostPort).join(","),
  });
  await agent.start();
  const forget = installLastResort();
  const admin = options.admin ? startAgentAdmin(agent, options.admin) : null;
  if (admin) {
    log.info("Agent {agent} serves /metrics and /healthz on {admin}", {
      agent: options.id,
      admin: formatHostPort({ host: admin.addr.hostname, port: admin.addr.port }),
    });
  }
  const stop = Promise.withResolvers<string>();
  Deno.addSignalListener("SIGINT", () => stop.resolve("SIGINT"));
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", () => stop.resolve("SIGTERM"));
  const signal = await stop.promise;
  log.info("{signal}: agent {agent} stops accepting and drains", { signal, agent: options.id });
  await agent.drain();
  await admin?.shutdown();
  log.info("Agent {agent} stopped", { agent: options.id });
  forget();
  return 0;
}

async function readToken(file: string): Promise<string> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    throw new UsageError(`Cannot read --token-file "${file}": ${(error as Error).message}`);
  }
  const token = text.trim();
  if (token === "") throw new UsageError(`Cannot use --token-file "${file}": it is empty`);
  return token;
}
