/**
 * The backends and the proxies under test, each started the way its operator would start it, on
 * loopback, with its config written to the run's temp folder:
 *
 * - backends: nginx serving a short HTTP answer (or `_backends.ts http` without nginx), an iperf3 server,
 *   a redis-server, and `_backends.ts echo` holding idle connections;
 * - proxies: HAProxy (`mode tcp`, `nbthread 1`), nginx `stream` (one worker), and switchyard: one manager
 *   and one agent, started as `deno run … main.ts manager|agent` (`--data-path` as asked), with every
 *   service on port 0 and the bound ports read from the agent's JSON log.
 */
import { fileURLToPath } from "node:url";
import { V8_FLAGS } from "../scripts/compile.ts";
import { type Proc, waitForPort } from "../tests/_helpers.ts";
import { findExecutable, freePort, type Processes, randomHex } from "./_procs.ts";

/** The agent's `--data-path` values: the epoll relay, or Deno's sockets. */
export type DataPath = "epoll" | "deno";

/** switchyard's `main.ts` in this checkout; `--main` points the bench at another one. */
export const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
export const BACKENDS_SCRIPT = fileURLToPath(new URL("./_backends.ts", import.meta.url));

/** The executables found on this machine; null when missing. */
export interface Tools {
  readonly nginx: string | null;
  /** The `load_module` line nginx needs for `stream`, "" when built in, null when not available. */
  readonly nginxStream: string | null;
  readonly haproxy: string | null;
  readonly wrk: string | null;
  readonly iperf3: string | null;
  /** The redis backend, and the load run against it; both are needed for the redis figure. */
  readonly redisServer: string | null;
  readonly redisBenchmark: string | null;
}

/** The executables `findTools` looks for, by the name they are installed under. */
const TOOL_NAMES = ["nginx", "haproxy", "wrk", "iperf3", "redis-server", "redis-benchmark"] as const;
export type ToolName = typeof TOOL_NAMES[number];

/**
 * The tools among `wanted` (all of them by default) found on this machine; the others are null.
 * `SWITCHYARD_BENCH_WITHOUT=wrk,haproxy` pretends some are missing.
 */
export async function findTools(wanted: readonly ToolName[] = TOOL_NAMES): Promise<Tools> {
  const without = (Deno.env.get("SWITCHYARD_BENCH_WITHOUT") ?? "").split(",").map((name) => name.trim());
  const find = (name: ToolName) =>
    wanted.includes(name) && !without.includes(name) ? findExecutable(name) : null;
  const nginx = find("nginx");
  return {
    nginx,
    nginxStream: nginx ? await findNginxStream(nginx) : null,
    haproxy: find("haproxy"),
    wrk: find("wrk"),
    iperf3: find("iperf3"),
    redisServer: find("redis-server"),
    redisBenchmark: find("redis-benchmark"),
  };
}

/** Where the backends listen; `iperf` is null without iperf3, `redis` without redis-server. */
export interface BackendPorts {
  readonly http: number;
  readonly iperf: number | null;
  readonly redis: number | null;
  readonly echo: number;
}

/** Where a target takes each kind of load; null where it does not. */
export interface FrontPorts {
  readonly http: number;
  readonly iperf: number | null;
  readonly redis: number | null;
  readonly echo: number | null;
}

/** A proxy (or the direct path) while it runs. */
export interface RunningTarget {
  readonly ports: FrontPorts;
  /** The processes whose memory holds the proxied connections; none for the direct path. */
  memoryPids(): number[];
  /** The processes whose CPU time a connection costs (for switchyard the agents and the manager). */
  cpuPids(): number[];
  /** Why the target is no longer usable (a process exited), or null while it is fine. */
  failure(): string | null;
  /** Warning and error lines the target logged, for the report. */
  problems(): string[];
  stop(): Promise<void>;
}

export interface StartContext {
  readonly procs: Processes;
  readonly tools: Tools;
  readonly dir: string;
  readonly backends: BackendPorts;
  /** Connections each proxy must be able to hold at once (each is two sockets). */
  readonly maxConnections: number;
  /** switchyard's `main.ts`. */
  readonly main: string;
}

/** Finds the nginx module that provides `stream`, from `nginx -V` and the usual module folders. */
export async function findNginxStream(nginx: string): Promise<string | null> {
  const output = await new Deno.Command(nginx, { args: ["-V"], stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(output.stderr) + new TextDecoder().decode(output.stdout);
  if (/--with-stream(\s|$)/.test(text)) return "";
  for (
    const dir of [
      "/usr/lib/nginx/modules",
      "/usr/share/nginx/modules",
      "/usr/lib64/nginx/modules",
      "/etc/nginx/modules",
    ]
  ) {
    const file = `${dir}/ngx_stream_module.so`;
    try {
      if (Deno.statSync(file).isFile) return `load_module ${file};`;
    } catch {
      // not here
    }
  }
  return null;
}

function nginxCommon(dir: string, name: string, connections: number): string {
  return [
    "daemon off;",
    "worker_processes 1;",
    `pid ${dir}/${name}.pid;`,
    `error_log ${dir}/${name}.log warn;`,
    `events { worker_connections ${connections}; }`,
  ].join("\n");
}

async function startNginx(
  context: Pick<StartContext, "procs" | "tools" | "dir">,
  name: string,
  config: string,
): Promise<Proc> {
  const file = `${context.dir}/${name}.conf`;
  await Deno.writeTextFile(file, config);
  return context.procs.spawn(name, context.tools.nginx as string, [
    "-p",
    `${context.dir}/`,
    "-e",
    `${context.dir}/${name}.log`,
    "-c",
    file,
  ]);
}

/**
 * Starts the backends: HTTP (nginx, else Deno), an iperf3 server (unless `iperf` is false or iperf3 is
 * missing), a redis-server (unless `redis` is false or redis-server is missing), echo, and with `rude` the
 * backend that resets every connection.
 */
export async function startBackends(
  context: Pick<StartContext, "procs" | "tools" | "dir">,
  options: { iperf?: boolean; redis?: boolean; rude?: boolean } = {},
): Promise<
  { ports: BackendPorts & { rude: number | null }; httpServer: string; failure: () => string | null }
> {
  const { iperf: withIperf = true, redis: withRedis = true, rude = false } = options;
  const deno = context.procs.spawn("backends", Deno.execPath(), [
    "run",
    "--allow-net",
    BACKENDS_SCRIPT,
    "echo",
    ...(context.tools.nginx ? [] : ["http"]),
    ...(rude ? ["rude"] : []),
  ]);
  const line = await deno.waitForStdout(/^\{.*\}$/m);
  const denoPorts = JSON.parse(line[0]) as { echo: number; http?: number; rude?: number };

  const started: Proc[] = [deno];
  let http = denoPorts.http ?? 0;
  let httpServer = "Deno.serve (nginx is not installed)";
  if (context.tools.nginx) {
    http = freePort();
    const dir = context.dir;
    const proc = await startNginx(
      context,
      "backend-nginx",
      `${nginxCommon(dir, "backend-nginx", 4096)}
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${http};
    default_type text/plain;
    location / { return 200 "switchyard bench\\n"; }
  }
}
`,
    );
    await waitForPort(http, { what: "the nginx backend" }).catch((error) => {
      throw new Error(`${error.message}\n${proc.tail.slice(-10).join("\n")}`);
    });
    started.push(proc);
    httpServer = "nginx, 1 worker";
  }

  let iperf: number | null = null;
  if (context.tools.iperf3 && withIperf) {
    iperf = freePort();
    started.push(context.procs.spawn("iperf3-server", context.tools.iperf3, [
      "-s",
      "-B",
      "127.0.0.1",
      "-p",
      String(iperf),
    ]));
    await waitForPort(iperf, { what: "the iperf3 server" });
  }

  let redis: number | null = null;
  if (context.tools.redisServer && withRedis) {
    // redis-server cannot listen on port 0 and report the port, so it gets one that was free a moment ago.
    redis = freePort();
    const dir = `${context.dir}/redis`;
    await Deno.mkdir(dir, { recursive: true });
    const proc = context.procs.spawn("redis-server", context.tools.redisServer, [
      "--bind",
      "127.0.0.1",
      "--port",
      String(redis),
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
    ]);
    await waitForPort(redis, { what: "redis-server" }).catch((error) => {
      throw new Error(`${error.message}\n${proc.tail.slice(-10).join("\n")}`);
    });
    started.push(proc);
  }
  const failure = () => {
    const dead = started.find((proc) => !proc.running);
    return dead
      ? `${dead.name} exited with code ${dead.exit?.code}: ${dead.tail.slice(-10).join(" | ")}`
      : null;
  };
  return {
    ports: { http, iperf, redis, echo: denoPorts.echo, rude: denoPorts.rude ?? null },
    httpServer,
    failure,
  };
}

function processTarget(
  procs: Processes,
  proc: Proc,
  ports: FrontPorts,
  memoryPid: () => number | null,
): RunningTarget {
  // One process holds the connections and does the work (HAProxy, the nginx worker).
  const pids = () => {
    const pid = memoryPid();
    return pid === null ? [] : [pid];
  };
  return {
    ports,
    memoryPids: pids,
    cpuPids: pids,
    failure: () => proc.exit === null ? null : `${proc.name} exited with code ${proc.exit.code}`,
    problems: () => proc.tail.filter((line) => /\[(warn|error|alert|emerg|crit)\]|WARNING|ALERT/i.test(line)),
    stop: () => procs.stop(proc),
  };
}

/** The direct path: the load goes straight to the backends. */
export function directTarget(context: StartContext): RunningTarget {
  return {
    ports: {
      http: context.backends.http,
      iperf: context.backends.iperf,
      redis: context.backends.redis,
      echo: null,
    },
    memoryPids: () => [],
    cpuPids: () => [],
    failure: () => null,
    problems: () => [],
    stop: () => Promise.resolve(),
  };
}

/** A port of its own for each backend there is, for a proxy whose config names its ports. */
function frontPorts(backends: BackendPorts): FrontPorts & { readonly echo: number } {
  return {
    http: freePort(),
    iperf: backends.iperf === null ? null : freePort(),
    redis: backends.redis === null ? null : freePort(),
    echo: freePort(),
  };
}

/** HAProxy in `mode tcp` with one thread, one frontend per backend. */
export async function startHaproxy(context: StartContext): Promise<RunningTarget> {
  const { backends, dir } = context;
  const ports = frontPorts(backends);
  const listen = (name: string, port: number | null, backend: number | null) =>
    port === null || backend === null
      ? ""
      : `listen ${name}\n  bind 127.0.0.1:${port}\n  server ${name}1 127.0.0.1:${backend}\n`;
  const config = `global
  nbthread 1
  maxconn ${context.maxConnections + 20}

defaults
  mode tcp
  timeout connect 2s
  timeout client 300s
  timeout server 300s

${listen("http", ports.http, backends.http)}
${listen("iperf", ports.iperf, backends.iperf)}
${listen("redis", ports.redis, backends.redis)}
${listen("echo", ports.echo, backends.echo)}
`;
  const file = `${dir}/haproxy.cfg`;
  await Deno.writeTextFile(file, config);
  const proc = context.procs.spawn("haproxy", context.tools.haproxy as string, ["-db", "-f", file]);
  await waitForPort(ports.echo, { what: "HAProxy" }).catch((error) => {
    throw new Error(`${error.message}\n${proc.tail.slice(-10).join("\n")}`);
  });
  return processTarget(context.procs, proc, ports, () => proc.pid);
}

/** nginx `stream` with one worker process; its memory is the worker's. */
export async function startNginxStream(context: StartContext): Promise<RunningTarget> {
  const { backends, dir } = context;
  const ports = frontPorts(backends);
  const server = (port: number | null, backend: number | null) =>
    port === null || backend === null
      ? ""
      : `  server { listen 127.0.0.1:${port}; proxy_pass 127.0.0.1:${backend}; }\n`;
  const proc = await startNginx(
    context,
    "nginx-stream",
    `${context.tools.nginxStream}
${nginxCommon(dir, "nginx-stream", 2 * context.maxConnections + 50)}
stream {
  proxy_connect_timeout 2s;
  proxy_timeout 300s;
${server(ports.http, backends.http)}${server(ports.iperf, backends.iperf)}${
      server(ports.redis, backends.redis)
    }${server(ports.echo, backends.echo)}}
`,
  );
  await waitForPort(ports.echo, { what: "nginx stream" }).catch((error) => {
    throw new Error(`${error.message}\n${proc.tail.slice(-10).join("\n")}`);
  });
  let worker: number | null = null;
  return processTarget(context.procs, proc, ports, () => {
    if (worker === null) {
      const children = readChildren(proc.pid);
      worker = children[0] ?? null;
    }
    return worker;
  });
}

function readChildren(pid: number): number[] {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim();
    return text === "" ? [] : text.split(/\s+/).map(Number);
  } catch {
    return [];
  }
}

/** A running switchyard: the manager, the agent and the ports the agent bound for each service. */
export interface Switchyard extends RunningTarget {
  readonly manager: Proc;
  /** The first agent (the only one unless `agents` was more). */
  readonly agent: Proc;
  readonly agents: readonly Proc[];
  readonly admin: string;
  readonly adminToken: string;
  readonly agentAdmin: string | null;
  /** The port the agent bound for each service, by name. */
  readonly bound: Readonly<Record<string, number>>;
}

/** The backends switchyard gets a service for, by the service's name; null or missing: none. */
export type SwitchyardBackends = {
  readonly [name in "http" | "iperf" | "redis" | "echo" | "rude"]?: number | null;
};

/**
 * switchyard's config for the bench: one service per kind of load, on port 0 unless `listen` gives the
 * port (agents sharing a port with reusePort need a fixed one).
 */
export function switchyardConfig(
  backends: SwitchyardBackends,
  options: {
    decide: "agent" | "manager";
    adminToken: string;
    maxConnections: number;
    listen?: Readonly<Record<string, number>>;
    handoff?: "claimant" | "local";
    /** `decide_ahead` of every service; the default (50ms) without it. */
    decideAhead?: string;
  },
): string {
  const service = (name: string, port: number | null | undefined) =>
    port === null || port === undefined ? "" : `  - name: ${name}
    listen: 127.0.0.1:${options.listen?.[name] ?? 0}
    decide: ${options.decide}${options.decideAhead ? `\n    decide_ahead: ${options.decideAhead}` : ""}
    handoff: ${options.handoff ?? "claimant"}
    backends:
      - { address: 127.0.0.1:${port}, weight: 100 }
    timeouts: { connect: 2s, idle: 300s, drain: 1s }
    limits: { max_connections: ${Math.max(options.maxConnections + 100, 50_000)} }
`;
  return `manager:
  admin: 127.0.0.1:0
  cluster: 127.0.0.1:0
  tokens:
    admin: ${options.adminToken}
    cluster: { file: cluster.token }
agents:
  heartbeat: 1s
services:
${service("http", backends.http)}${service("iperf", backends.iperf)}${service("redis", backends.redis)}${
    service("echo", backends.echo)
  }${service("rude", backends.rude)}`;
}

/**
 * Starts one manager and one agent (or `agents` of them) exactly as a user would, and waits until every
 * agent listens for every service in `backends`. Several agents share each service's port with reusePort,
 * as on a host whose cores each run an agent, with `handoff: local` (a handoff between agents of one host
 * would only add a hop).
 */
export async function startSwitchyard(
  procs: Processes,
  options: {
    dir: string;
    backends: SwitchyardBackends;
    decide: "agent" | "manager";
    maxConnections: number;
    agentAdmin?: boolean;
    /**
     * The agents' `--data-path`; without it they take their default (or `SWITCHYARD_DATA_PATH`). With it,
     * an agent that serves a service on another data path (the epoll relay unavailable) fails the start.
     */
    dataPath?: DataPath;
    /** The `main.ts` to run; the one of this checkout by default. */
    main?: string;
    /** V8 flags for both processes; by default those the compiled binary embeds (V8_FLAGS). */
    v8Flags?: readonly string[];
    /** Agents sharing each service's port (default 1). */
    agents?: number;
    /** `decide_ahead` of every service; the default without it. */
    decideAhead?: string;
  },
): Promise<Switchyard> {
  const count = options.agents ?? 1;
  const dir = `${options.dir}/switchyard-${options.decide}-${count}${
    options.dataPath ? `-${options.dataPath}` : ""
  }${options.decideAhead ? `-ahead-${options.decideAhead}` : ""}`;
  await Deno.mkdir(dir, { recursive: true });
  const tokenFile = `${dir}/cluster.token`;
  await Deno.writeTextFile(tokenFile, `${randomHex(32)}\n`);
  const adminToken = randomHex(24);
  const config = `${dir}/switchyard.yaml`;
  const shared = count > 1
    ? {
      listen: Object.fromEntries(
        Object.entries(options.backends).flatMap(([name, port]) => port == null ? [] : [[name, freePort()]]),
      ),
      handoff: "local" as const,
    }
    : {};
  await Deno.writeTextFile(config, switchyardConfig(options.backends, { ...options, ...shared, adminToken }));

  const main = options.main ?? MAIN;
  const cwd = main.slice(0, main.lastIndexOf("/")) || "/";
  const v8Flags = options.v8Flags ?? V8_FLAGS;
  const run = [
    "run",
    "--allow-all",
    "--unstable-net",
    ...(v8Flags.length > 0 ? [`--v8-flags=${v8Flags.join(",")}`] : []),
    main,
  ];
  const manager = procs.spawn(`switchyard manager (decide: ${options.decide})`, Deno.execPath(), [
    ...run,
    "manager",
    "--config",
    config,
    "--log-format",
    "json",
  ], { cwd });
  const ready = await manager.waitForLog((line) => line.message.startsWith("Manager serving"));
  const cluster = String(ready.properties.cluster);
  const admin = String(ready.properties.admin);

  const agentAdmin = options.agentAdmin ? `127.0.0.1:${freePort()}` : null;
  const dataPath = options.dataPath ? `, data path ${options.dataPath}` : "";
  const agents = Array.from(
    { length: count },
    (_, i) =>
      procs.spawn(`switchyard agent ${i + 1} (decide: ${options.decide}${dataPath})`, Deno.execPath(), [
        ...run,
        "agent",
        "--manager",
        cluster,
        "--token-file",
        tokenFile,
        "--id",
        `bench-${i + 1}`,
        "--log-format",
        "json",
        ...(agentAdmin && i === 0 ? ["--admin", agentAdmin] : []),
        ...(options.dataPath ? ["--data-path", options.dataPath] : []),
      ], { cwd }),
  );
  const agent = agents[0] as Proc;
  const bound: Record<string, number> = {};
  try {
    for (const each of agents) {
      for (const [name, port] of Object.entries(options.backends)) {
        if (port === null || port === undefined) continue;
        const line = await each.waitForLog((l) =>
          l.message.startsWith("Service") && l.properties.service === name && l.properties.bound !== undefined
        );
        bound[name] = Number(String(line.properties.bound).split(":").pop());
        // A row labelled with one data path must not measure the other (the relay fell back to Deno's
        // sockets); a checkout that does not log its data path is taken at its word.
        const served = line.properties.data_path;
        if (options.dataPath && served !== undefined && served !== options.dataPath) {
          const why = each.problems.map((problem) => problem.message).join(" | ");
          throw new Error(
            `${each.name} serves ${name} through "${served}", not --data-path ${options.dataPath}${
              why ? `: ${why}` : ""
            }`,
          );
        }
      }
    }
  } catch (error) {
    // Left running, they would share the machine with the targets measured next.
    await Promise.all(agents.map((each) => procs.stop(each)));
    await procs.stop(manager);
    throw error;
  }
  const ports = {
    http: bound.http ?? 0,
    iperf: bound.iperf ?? null,
    redis: bound.redis ?? null,
    echo: bound.echo ?? null,
  };
  const describe = (line: { level: string; message: string }) => `${line.level} ${line.message}`;
  return {
    manager,
    agent,
    agents,
    admin,
    adminToken,
    agentAdmin,
    bound,
    ports,
    memoryPids: () => agents.map((each) => each.pid),
    cpuPids: () => [...agents.map((each) => each.pid), manager.pid],
    failure: () => {
      for (const proc of [...agents, manager]) {
        if (proc.exit !== null) {
          return `${proc.name} exited with code ${proc.exit.code}: ${proc.tail.slice(-5).join(" | ")}`;
        }
      }
      return null;
    },
    problems: () => [
      ...manager.problems.map((line) => `manager: ${describe(line)}`),
      ...agents.flatMap((each, i) =>
        each.problems.map((line) => `agent${count > 1 ? ` ${i + 1}` : ""}: ${describe(line)}`)
      ),
    ],
    stop: async () => {
      await Promise.all(agents.map((each) => procs.stop(each)));
      await procs.stop(manager);
    },
  };
}
