/**
 * Measurement only (branch uring-data-path): a bounded mixed soak of the io_uring relay, run in this
 * process through `RelayDataPlane` as the agent will. Three services: HTTP (nginx, else Deno), echo, and
 * a backend that resets every connection. At once, for DURATION seconds (default 30):
 * - wrk keep-alive and wrk `Connection: close`, every answer a 200;
 * - echo clients that send 256 KiB, half-close, and must read the same bytes back;
 * - clients that reset (close with bytes unread), and clients of the resetting backend.
 * Passes when no client saw a wrong answer, no flow is left open after, no descriptor is left over, and
 * the process's RSS grew by at most 10% (plus 8 MiB) from the middle of the run to its end.
 *
 *   deno run -A agent/relay/soak.ts
 */
import { runWrk } from "../../bench/_load.ts";
import { findExecutable, Processes, rssKiB, sleep } from "../../bench/_procs.ts";
import { findNginxStream, startBackends } from "../../bench/_targets.ts";
import { RelayDataPlane } from "./data_plane.ts";

const durationS = Number(Deno.env.get("DURATION") ?? 30);
const procs = new Processes();
const dir = await Deno.makeTempDir({ prefix: "relay-soak-" });
const nginx = findExecutable("nginx");
const tools = {
  nginx,
  nginxStream: nginx ? await findNginxStream(nginx) : null,
  haproxy: null,
  wrk: findExecutable("wrk"),
  iperf3: null,
};
if (tools.wrk === null) throw new Error("wrk is needed (bash bench/setup)");
const failures: string[] = [];
let plane: RelayDataPlane | null = null;
try {
  const backends = await startBackends({ procs, tools, dir }, { iperf: false, rude: true });
  const opened = await RelayDataPlane.open({ place: () => {}, flows: () => {} });
  if (!(opened instanceof RelayDataPlane)) throw new Error(opened.unavailable);
  plane = opened;
  const service = (name: string, port: number) =>
    plane!.listen({
      name,
      listen: { ip: "127.0.0.1", port: 0 },
      backends: [{ ip: "127.0.0.1", port }],
      maxConnections: 10_000,
      connectTimeoutMs: 2_000,
      idleTimeoutMs: 60_000,
    });
  const http = (await service("http", backends.ports.http)).port;
  const echo = (await service("echo", backends.ports.echo)).port;
  const rude = (await service("rude", backends.ports.rude!)).port;
  const fdsBefore = [...Deno.readDirSync("/proc/self/fd")].length;
  const until = performance.now() + durationS * 1_000;
  const tally = { echo: 0, resets: 0, rude: 0 };

  const echoClient = async () => {
    const sent = new Uint8Array(256 * 1024).map((_, i) => (i * 7) & 0xff);
    while (performance.now() < until) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: echo });
      const writing = (async () => {
        for (let at = 0; at < sent.length;) at += await conn.write(sent.subarray(at));
        await conn.closeWrite();
      })();
      const received = new Uint8Array(sent.length);
      let got = 0;
      for (;;) {
        const n = await conn.read(received.subarray(Math.min(got, received.length - 1)));
        if (n === null) break;
        got += n;
        if (got > sent.length) break;
      }
      await writing;
      conn.close();
      if (got !== sent.length || !received.every((byte, i) => byte === sent[i])) {
        failures.push(`echo: ${got} bytes back of ${sent.length}, or different`);
      }
      tally.echo++;
    }
  };
  const resetClient = async (port: number, kind: "resets" | "rude") => {
    while (performance.now() < until) {
      try {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: soak\r\n\r\n"));
        if (kind === "resets") await sleep(1);
        conn.close();
        // Paced, so the resets do not starve the other clients of this process.
        await sleep(2);
      } catch (error) {
        failures.push(`${kind}: ${error instanceof Error ? error.message : String(error)}`);
      }
      tally[kind]++;
    }
  };
  let middleRss = 0;
  const sampling = (async () => {
    await sleep(durationS * 500);
    middleRss = rssKiB(Deno.pid) ?? 0;
  })();
  const [keepAlive, close] = await Promise.all([
    runWrk(tools.wrk, http, { threads: 1, connections: 20, durationS, close: false }),
    runWrk(tools.wrk, http, { threads: 1, connections: 20, durationS, close: true }),
    echoClient(),
    echoClient(),
    resetClient(http, "resets"),
    resetClient(rude, "rude"),
    sampling,
  ]);
  const endRss = rssKiB(Deno.pid) ?? 0;
  for (const [name, result] of [["keep-alive", keepAlive], ["close", close]] as const) {
    if (result.errors > 0) failures.push(`wrk ${name}: ${result.errorText}`);
  }
  await sleep(500);
  const counters = await plane.counters();
  if (counters.open !== 0) failures.push(`${counters.open} flows still open after the clients stopped`);
  const fdsAfter = [...Deno.readDirSync("/proc/self/fd")].length;
  if (fdsAfter > fdsBefore + 2) failures.push(`${fdsAfter - fdsBefore} descriptors more than before`);
  if (endRss > middleRss * 1.1 + 8 * 1024) failures.push(`RSS grew from ${middleRss} to ${endRss} KiB`);
  console.log(JSON.stringify({
    durationS,
    keepAlive: { requests: keepAlive.requests, rps: keepAlive.requestsPerSecond, p99Ms: keepAlive.p99Ms },
    close: { requests: close.requests, rps: close.requestsPerSecond },
    ...tally,
    counters,
    rssKiB: { middle: middleRss, end: endRss },
    failures: failures.slice(0, 10),
  }));
} finally {
  await plane?.stop();
  await procs.stopAll();
  await Deno.remove(dir, { recursive: true });
}
console.log(failures.length === 0 ? "PASS" : `FAIL: ${failures.length} failures`);
Deno.exit(failures.length === 0 ? 0 : 1);
