/**
 * How many feedback reports a manager takes, alone and as the leader of several managers that stores every
 * report in etcd before it answers (batched: at most one transaction per 50 ms, with each backend's latest
 * record). One etcd member on this machine's disk, one manager process, and `--clients` concurrent clients
 * POSTing to `/v1/feedback` for `--seconds` each: single reports, then batches of 100. Each answer is a 202
 * only once its reports are stored.
 *
 *   deno run --allow-all bench/ha_feedback.ts [--seconds 10] [--clients 32]
 */
import { parseArgs } from "node:util";
import { ADMIN_TOKEN, CLUSTER_TOKEN, testConfig, testService } from "../tests/_config.ts";
import { EtcdCluster, etcdUnavailable } from "../tests/_etcd.ts";
import { eventually, startManagerProcess } from "../tests/_helpers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { seconds: { type: "string", default: "10" }, clients: { type: "string", default: "32" } },
});
const seconds = Number(values.seconds);
const clients = Number(values.clients);
const missing = etcdUnavailable();
if (missing) {
  console.error(`bench/ha_feedback: ${missing}`);
  Deno.exit(1);
}

const BACKENDS = Array.from({ length: 20 }, (_, i) => `10.9.0.${i + 1}:80`);

interface Result {
  reports: number;
  requests: number;
  failed: number;
  latencies: number[];
  transactions: number;
}

/** `clients` loops POSTing `perRequest` reports each, for `seconds`. */
async function drive(admin: string, perRequest: number): Promise<Omit<Result, "transactions">> {
  const deadline = performance.now() + seconds * 1_000;
  const latencies: number[] = [];
  let reports = 0;
  let failed = 0;
  let sequence = 0;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() < deadline) {
      const body = Array.from({ length: perRequest }, () => ({
        service: "web",
        backend: BACKENDS[sequence++ % BACKENDS.length],
        utilization: 0.2 + (sequence % 7) / 10,
        qps: 100 + (sequence % 50),
      }));
      const started = performance.now();
      const response = await fetch(`http://${admin}/v1/feedback`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify(perRequest === 1 ? body[0] : body),
      });
      await response.body?.cancel();
      latencies.push(performance.now() - started);
      if (response.status === 202) reports += perRequest;
      else failed++;
    }
  }));
  return { reports, requests: latencies.length, failed, latencies };
}

async function transactions(admin: string): Promise<number> {
  const text = await (await fetch(`http://${admin}/metrics`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  })).text();
  const line = text.split("\n").find((l) => l.startsWith("switchyard_manager_state_writes_total "));
  return Number(line?.split(" ")[1] ?? 0);
}

async function measure(ha: { etcd: string[] } | null): Promise<Map<number, Result>> {
  const dir = await Deno.makeTempDir({ prefix: "switchyard-bench-feedback-" });
  await Deno.writeTextFile(`${dir}/cluster.token`, CLUSTER_TOKEN);
  const yaml = testConfig({
    manager: ha ? { ha: { etcd: ha.etcd, prefix: `/bench-${Deno.pid}`, lease: "2s" } } : {},
    heartbeat: "1s",
    services: [testService({ backends: BACKENDS })],
  });
  const manager = await startManagerProcess(dir, yaml, ["--log-level", "info"]);
  const results = new Map<number, Result>();
  try {
    if (ha) {
      await eventually(
        async () => {
          const response = await fetch(`http://${manager.admin}/v1/cluster`, {
            headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
          });
          return ((await response.json()) as { role: string }).role === "leader";
        },
        10_000,
        "the manager to lead",
      );
    }
    for (const perRequest of [1, 100]) {
      const before = await transactions(manager.admin);
      const result = await drive(manager.admin, perRequest);
      results.set(perRequest, { ...result, transactions: (await transactions(manager.admin)) - before });
    }
  } finally {
    await manager.proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
  return results;
}

const etcd = await EtcdCluster.start();
let alone: Map<number, Result>;
let leader: Map<number, Result>;
try {
  leader = await measure({ etcd: etcd.endpoints });
  alone = await measure(null);
} finally {
  await etcd.close();
}

const quantile = (values: number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
};
console.log(`${clients} clients, ${seconds} s each, ${BACKENDS.length} backends reported on\n`);
console.log("| manager | reports per POST | reports/s | POSTs/s | p50 ms | p99 ms | failed | etcd txns/s |");
console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const [name, results] of [["alone", alone], ["leader, stored in etcd", leader]] as const) {
  for (const [perRequest, r] of results) {
    console.log(
      `| ${name} | ${perRequest} | ${(r.reports / seconds).toFixed(0)} | ${
        (r.requests / seconds).toFixed(0)
      } | ${quantile(r.latencies, 0.5).toFixed(1)} | ${
        quantile(r.latencies, 0.99).toFixed(1)
      } | ${r.failed} | ${(r.transactions / seconds).toFixed(1)} |`,
    );
  }
}
