// Measurement only: HAProxy, switchyard variants and extra proxies, interleaved.
// VARIANTS="agent=@agent;mgr=@manager;old=@manager%/elsewhere/main.ts" EXTRA="relay=bench/relay_proxy.ts" R=3 D=5 deno run -A bench/compare.ts
// Interleaved comparison: HAProxy and switchyard variants (V8 flag sets), keep-alive and close.
// env: VARIANTS="base=;stgc=--single-threaded-gc" R=4 D=5 DECIDE=agent
import { waitForPort } from "../tests/_helpers.ts";
import { cpuMs, freePort, Processes, sleep } from "./_procs.ts";
import {
  findTools,
  type RunningTarget,
  startBackends,
  type StartContext,
  startHaproxy,
  startSwitchyard,
} from "./_targets.ts";
import { runWrk } from "./_load.ts";
import { V8_FLAGS } from "../scripts/compile.ts";

const R = Number(Deno.env.get("R") ?? 4), D = Number(Deno.env.get("D") ?? 5);
const decide = (Deno.env.get("DECIDE") ?? "agent") as "agent" | "manager";
const variants = (Deno.env.get("VARIANTS") ?? "base=").split(";").map((v) => {
  const [name, rest] = v.split("=") as [string, string];
  const [flags, after] = rest.split("@") as [string, string | undefined];
  const [dec, main] = (after ?? "").split("%") as [string, string | undefined];
  return {
    name,
    decide: (dec || decide) as "agent" | "manager",
    flags: [...V8_FLAGS, ...flags.split(",").filter(Boolean)],
    main,
  };
});
const tools = await findTools(["nginx", "haproxy", "wrk"]);
const procs = new Processes();
const dir = await Deno.makeTempDir();
try {
  const b = await startBackends({ procs, tools, dir }, { iperf: false });
  const ctx: StartContext = {
    procs,
    tools,
    dir,
    backends: b.ports,
    maxConnections: 1000,
    main: new URL("../main.ts", import.meta.url).pathname,
  };
  const targets: [string, RunningTarget][] = [["haproxy", await startHaproxy(ctx)]];
  for (const x of (Deno.env.get("EXTRA") ?? "").split(";").filter(Boolean)) {
    const [name, script, envs] = x.split("=") as [string, string, string | undefined];
    const port = freePort();
    const env: Record<string, string> = { LISTEN: String(port), BACKEND: String(b.ports.http) };
    for (const kv of (envs ?? "").split(",").filter(Boolean)) {
      const [k, v] = kv.split(":");
      env[k!] = v!;
    }
    const p = procs.spawn(name, Deno.execPath(), ["run", "-A", `--v8-flags=${V8_FLAGS.join(",")}`, script], {
      env,
    });
    await waitForPort(port, { what: name });
    targets.push([name, {
      ports: { http: port, iperf: null, redis: null, echo: null },
      memoryPids: () => [p.pid],
      cpuPids: () => [p.pid],
      failure: () => null,
      problems: () => [],
      stop: () => procs.stop(p),
    }]);
  }
  for (const v of variants.filter((v) => v.name !== "none")) {
    const d = `${dir}/${v.name}`;
    await Deno.mkdir(d);
    targets.push([
      v.name,
      await startSwitchyard(procs, {
        dir: d,
        backends: { http: b.ports.http },
        decide: v.decide,
        maxConnections: 1000,
        v8Flags: v.flags,
        ...(v.main ? { main: v.main } : {}),
      }),
    ]);
  }
  const res: Record<string, { ka: number[]; p99: number[]; nc: number[]; cpu: number[] }> = {};
  for (const [n] of targets) res[n] = { ka: [], p99: [], nc: [], cpu: [] };
  for (const [, t] of targets) {
    await runWrk(tools.wrk!, t.ports.http, { threads: 1, connections: 50, durationS: 2, close: false });
  }
  for (let r = 0; r < R; r++) {
    const order = [...targets.slice(r % targets.length), ...targets.slice(0, r % targets.length)];
    for (const [n, t] of order) {
      const ka = await runWrk(tools.wrk!, t.ports.http, {
        threads: 1,
        connections: 50,
        durationS: D,
        close: false,
      });
      await sleep(300);
      const pids = Deno.env.get("SPLIT") ? t.cpuPids() : t.cpuPids();
      const per0 = pids.map((p) => cpuMs(p) ?? 0);
      const c0 = t.cpuPids().reduce((s, p) => s + (cpuMs(p) ?? 0), 0);
      const nc = await runWrk(tools.wrk!, t.ports.http, {
        threads: 1,
        connections: 50,
        durationS: D,
        close: true,
      });
      const c1 = t.cpuPids().reduce((s, p) => s + (cpuMs(p) ?? 0), 0);
      const split = pids.map((p, i) => (((cpuMs(p) ?? 0) - per0[i]!) * 1000 / nc.requests).toFixed(0)).join(
        "/",
      );
      await sleep(300);
      res[n]!.ka.push(ka.requestsPerSecond);
      res[n]!.p99.push(ka.p99Ms!);
      res[n]!.nc.push(nc.requestsPerSecond);
      res[n]!.cpu.push((c1 - c0) * 1000 / nc.requests);
      console.log(
        `r${r} ${n.padEnd(10)} ka ${ka.requestsPerSecond.toFixed(0)} p99 ${ka.p99Ms} nc ${
          nc.requestsPerSecond.toFixed(0)
        } cpu/conn ${((c1 - c0) * 1000 / nc.requests).toFixed(1)}us (${split})`,
      );
    }
  }
  const med = (a: number[]) => {
    const s = [...a].sort((x, y) => x - y);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  const h = res.haproxy!;
  for (const [n] of targets) {
    const x = res[n]!;
    console.log(
      `${n.padEnd(10)} ka ${med(x.ka).toFixed(0)} (${(med(x.ka) / med(h.ka)).toFixed(2)}x) p99 ${
        med(x.p99)
      } (${(med(x.p99) / med(h.p99)).toFixed(2)}x) nc ${med(x.nc).toFixed(0)} (${
        (med(x.nc) / med(h.nc)).toFixed(2)
      }x) cpu ${med(x.cpu).toFixed(1)}`,
    );
  }
} finally {
  await procs.stopAll();
  await Deno.remove(dir, { recursive: true });
}
