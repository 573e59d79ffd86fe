/**
 * No switchyard process makes an io_uring instance: an agent runs as it would under Docker's, containerd's
 * or GKE's default seccomp profile (`io_uring_setup` fails with EPERM, injected by strace), carries every
 * connection of a load through its epoll relay, and makes no io_uring system call at all.
 */
import assert from "node:assert/strict";
import { startGreeter } from "./_backends.ts";
import { spread } from "./_cluster.ts";
import { CLUSTER_TOKEN, testConfig, testService } from "./_config.ts";
import { startAgentProcess, startManagerProcess } from "./_helpers.ts";

const STRACE = "/usr/bin/strace";
const strace = (() => {
  try {
    return Deno.statSync(STRACE).isFile;
  } catch {
    return false;
  }
})();
const IO_URING_CALLS = "io_uring_setup,io_uring_enter,io_uring_register";

/** The processes `tracer` (strace) runs: its children. */
function traced(tracer: number): number[] {
  try {
    const text = Deno.readTextFileSync(`/proc/${tracer}/task/${tracer}/children`).trim();
    return text === "" ? [] : text.split(" ").map(Number);
  } catch {
    return []; // strace is gone
  }
}

Deno.test({
  name:
    "an agent whose io_uring_setup fails with EPERM serves 2,000 connections on epoll and makes no io_uring call",
  ignore: Deno.build.os !== "linux" || !strace,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "switchyard-no-uring-" });
    const backends = [startGreeter("b1"), startGreeter("b2")];
    await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
    const manager = await startManagerProcess(
      dir,
      testConfig({
        services: (["agent", "manager"] as const).map((decide, i) =>
          testService({
            name: `by-${decide}`,
            decide,
            backends: backends.map((backend) => ({ address: backend.address, weight: 100 })),
            ...(i === 0 ? {} : { decision_timeout: "1s" }),
          })
        ),
      }),
    );
    const trace = `${dir}/strace.log`;
    let agent: Awaited<ReturnType<typeof startAgentProcess>> | null = null;
    try {
      agent = await startAgentProcess({
        manager: manager.cluster,
        tokenFile: `${dir}/cluster.token`,
        id: "agent-1",
        service: "by-manager",
        // At info, flows of decide: agent are placed by the relay alone, those of decide: manager asked.
        // The epoll relay whatever SWITCHYARD_DATA_PATH says: it is what this test is about.
        extra: ["--log-level", "info", "--data-path", "epoll"],
        prefix: [
          STRACE,
          "-f",
          "--seccomp-bpf",
          "-qq",
          "-o",
          trace,
          // epoll_create1 too: every process makes one, so an empty trace cannot pass for a clean one.
          "-e",
          `trace=${IO_URING_CALLS},epoll_create1`,
          "-e",
          "inject=io_uring_setup:error=EPERM",
          "--",
        ],
      });
      const ports = new Map<string, number>();
      for (const line of agent.proc.logs) {
        if (line.message.startsWith("Service") && typeof line.properties.bound === "string") {
          ports.set(String(line.properties.service), Number(line.properties.bound.split(":").pop()));
        }
      }
      assert.ok(
        agent.proc.logs.some((line) => line.message === "Serving connections through the epoll relay"),
      );
      for (
        const [service, port] of [["by-agent", ports.get("by-agent")], ["by-manager", agent.port]] as const
      ) {
        assert.ok(port, `${service} is listening`);
        const tally = await spread(port, 1_000, 25);
        const served = (tally.get("b1") ?? 0) + (tally.get("b2") ?? 0);
        assert.equal(served, 1_000, `${service}: ${JSON.stringify(Object.fromEntries(tally))}`);
      }
      // The agent is strace's child: it is told to stop, and strace exits with its status once it has.
      for (const pid of traced(agent.proc.pid)) Deno.kill(pid, "SIGTERM");
      assert.equal((await agent.proc.status()).code, 0);
      const calls = (await Deno.readTextFile(trace)).split("\n").filter((line) => line.trim() !== "");
      assert.ok(
        calls.some((line) => line.includes("epoll_create1(")),
        `strace saw nothing:\n${calls.join("\n")}`,
      );
      const uring = calls.filter((line) => line.includes("io_uring"));
      assert.deepEqual(uring, [], "io_uring system calls were made");
    } finally {
      // A tracee outlives a killed strace (6.1 has no --kill-on-exit): it goes first.
      if (agent) { for (const pid of traced(agent.proc.pid)) Deno.kill(pid, "SIGKILL"); }
      await agent?.proc.stop();
      await manager.proc.stop();
      await Promise.all(backends.map((backend) => backend.close()));
      await Deno.remove(dir, { recursive: true });
    }
  },
});
