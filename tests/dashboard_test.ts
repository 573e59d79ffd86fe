/**
 * The dashboard in a real browser: Debian's chromium, driven by playwright-core, opens the manager's page
 * of a running cluster, is refused a wrong token, takes the right one, shows every backend and agent,
 * drains a backend and brings it back, and leaves a screenshot in tests/out/; the page charts a history
 * the test samples itself, from none to many samples; and the demo's dashboard shows the weights its
 * backends' feedback moves. Skipped when chromium is not installed (`apt-get install -y chromium`;
 * `bash .ci/run` installs it).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { testAdminApp } from "../manager/_test_admin_app.ts";
import { type Config, parseConfig } from "../manager/config.ts";
import { type AgentSample, type BackendSample, History } from "../manager/history.ts";
import { ClusterModel } from "../manager/state.ts";
import { eventually, Proc } from "./_helpers.ts";
import { startGreeter as startNamedBackend } from "./_backends.ts";
import { ADMIN_TOKEN } from "./_config.ts";
import { connectAndReadLine, startTestCluster } from "./_cluster.ts";

const CHROMIUM = "/usr/bin/chromium";
const OUT = fileURLToPath(new URL("./out/", import.meta.url));
const installed = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

const NAME = "the dashboard shows every backend and agent, and drains and undrains a backend from a click";
const DEMO_NAME = "the demo's dashboard shows its backends' feedback moving their weight bars";
const HISTORY_NAME =
  "the dashboard charts each backend's and agent's history, from no sample to one to many, and moves on with new samples";
// Fixed ports, as the demo's are, below the ephemeral range and apart from demo_test's and bundle_test's.
const DEMO_LISTEN = "127.0.0.1:18082";
const DEMO_ADMIN = "127.0.0.1:19092";

type Browser = Awaited<ReturnType<typeof chromium.launchPersistentContext>>;
type Page = Awaited<ReturnType<Browser["newPage"]>>;

/** Headless chromium with a fresh profile, never a downloaded browser. */
function launch(profile: string): Promise<Browser> {
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

const ignored = (name: string) =>
  installed ? name : `${name} (ignored: ${CHROMIUM} is not installed; apt-get install -y chromium)`;

interface ServiceView {
  backends: Array<{ address: string; state: string; operator_state: string }>;
}

/**
 * The lines of a chart as the page drew them, by series: the points of each path (counted in its `d`, not
 * taken from what the page says) and their y, in pixels down from the top.
 */
function chartLines(page: Page, scope: string, chart: string): Promise<Record<string, number[]>> {
  return page.locator(`${scope} figure[data-chart="${chart}"] path.line`).evaluateAll((paths) =>
    Object.fromEntries(paths.map((path) => [
      path.getAttribute("data-series"),
      [...(path.getAttribute("d") ?? "").matchAll(/[ML][^,]+,([^ ]+)/g)].map((match) => Number(match[1])),
    ]))
  );
}

/** How many points each line of a chart has, by series. */
async function chartPoints(page: Page, scope: string, chart: string): Promise<Record<string, number>> {
  const lines = await chartLines(page, scope, chart);
  return Object.fromEntries(Object.entries(lines).map(([name, ys]) => [name, ys.length]));
}

/** `count` for every name. */
const each = (names: readonly string[], count: number) =>
  Object.fromEntries(names.map((name) => [name, count]));

Deno.test({
  name: ignored(NAME),
  ignore: !installed,
  async fn() {
    const backends = ["alpha", "bravo", "charlie"].map((name) => startNamedBackend(name, { hold: true }));
    const [a, b, c] = backends as [
      ReturnType<typeof startNamedBackend>,
      ReturnType<typeof startNamedBackend>,
      ReturnType<typeof startNamedBackend>,
    ];
    const cluster = await startTestCluster({
      agents: 2,
      services: [{
        name: "web",
        listen: "127.0.0.1:0",
        decide: "manager",
        health: { interval: "1h", timeout: "1s" },
        backends: [
          { address: a.address, weight: 100 },
          { address: b.address, weight: 100 },
          { address: c.address, weight: 50 },
        ],
      }],
    });
    const profile = await Deno.makeTempDir({ prefix: "switchyard-chromium-" });
    const held: Array<{ close(): Promise<void> }> = [];
    let browser: Browser | null = null;
    try {
      await eventually(
        async () => (await cluster.api<{ agents: unknown[] }>("/v1/agents")).agents.length === 2,
        10_000,
        "both agents",
      );
      // Something to look at: feedback on two backends and a few open connections.
      await cluster.api("/v1/feedback", {
        method: "POST",
        body: JSON.stringify([
          { service: "web", backend: a.address, utilization: 0.3, ttl: "5m" },
          { service: "web", backend: b.address, utilization: 0.6, ttl: "5m" },
        ]),
      });
      for (let i = 0; i < 6; i++) held.push(await connectAndReadLine(cluster.agents[i % 2]!.port));

      browser = await launch(profile);
      const page = browser.pages()[0] ?? await browser.newPage();
      const urls: string[] = [];
      page.on("request", (request) => urls.push(request.url()));
      const errors: string[] = [];
      page.on("pageerror", (error) => errors.push(String(error)));
      page.on("console", (message) => {
        // The wrong token below is answered 401, which the browser reports; anything else is an error.
        if (message.type() === "error" && !message.text().includes("status of 401")) {
          errors.push(message.text());
        }
      });

      await page.goto(`http://${cluster.admin}/`);
      await page.locator("#login").waitFor({ state: "visible" });
      await page.fill("#token", "not-the-admin-token-at-all");
      await page.press("#token", "Enter");
      await page.locator("#login-error", { hasText: "refused" }).waitFor();

      await page.fill("#token", ADMIN_TOKEN);
      await page.press("#token", "Enter");
      await page.locator("#login").waitFor({ state: "hidden" });
      for (const backend of backends) {
        await page.locator(`tr[data-backend="${backend.address}"]`).waitFor();
      }
      for (const id of ["agent-1", "agent-2"]) {
        await page.locator(`#agents li[data-agent="${id}"]`).waitFor();
        await page.locator(`#ring circle[data-agent="${id}"]`).waitFor({ state: "attached" });
      }
      const row = (address: string) => page.locator(`tr[data-backend="${address}"]`);
      await row(a.address).locator("td", { hasText: "utilization 0.30" }).waitFor();
      // The manager sampled its backends when it started: a point each in the charts of their open
      // connections and effective weight, fetched from /v1/history with the token.
      await eventually(
        async () =>
          Object.values(await chartPoints(page, '[data-service="web"]', "weight")).filter((n) => n >= 1)
            .length === 3,
        10_000,
        "a point of each backend's effective weight",
      );
      await page.locator("#sum-open", { hasText: "6" }).waitFor();
      await page.locator("#sum-leader", { hasText: "one manager" }).waitFor();

      await row(b.address).locator('button[data-action="drain"]').click();
      await row(b.address).locator(".badge", { hasText: "drain" }).waitFor();
      await row(b.address).locator('button[data-action="up"]').waitFor();
      const view = await cluster.api<ServiceView>("/v1/services/web");
      const drained = view.backends.find((backend) => backend.address === b.address);
      assert.equal(drained?.state, "drain");
      assert.equal(drained?.operator_state, "drain");
      await page.locator("#events li", { hasText: `Operator set ${b.address} of web to drain` }).waitFor();

      await Deno.mkdir(OUT, { recursive: true });
      await page.screenshot({ path: `${OUT}dashboard.png`, fullPage: true, animations: "disabled" });

      // The token is asked for once: a reload keeps it for this tab.
      await page.reload();
      await row(b.address).locator(".badge", { hasText: "drain" }).waitFor();
      assert.equal(await page.locator("#login").isHidden(), true);

      await row(b.address).locator('button[data-action="up"]').click();
      await row(b.address).locator(".badge", { hasText: "up" }).waitFor();
      await eventually(
        async () =>
          (await cluster.api<ServiceView>("/v1/services/web")).backends.find((x) => x.address === b.address)
            ?.operator_state === "up",
        5_000,
        "the manager to have the backend up again",
      );

      assert.ok(urls.length > 3, "the page polled the API");
      assert.deepEqual(urls.filter((url) => url.includes(ADMIN_TOKEN)), [], "the token is in no URL");
      assert.deepEqual(urls.filter((url) => !url.startsWith(`http://${cluster.admin}/`)), [], "same origin");
      assert.deepEqual(errors, [], "no script error or CSP violation");
    } finally {
      await browser?.close();
      await Promise.all(held.map((conn) => conn.close()));
      await cluster.close();
      await Promise.all(backends.map((backend) => backend.close()));
      await Deno.remove(profile, { recursive: true });
    }
  },
});

Deno.test({
  name: ignored(DEMO_NAME),
  ignore: !installed,
  async fn() {
    const demo = new Proc(["demo", "--listen", DEMO_LISTEN, "--admin", DEMO_ADMIN, "--duration", "60"]);
    const profile = await Deno.makeTempDir({ prefix: "switchyard-chromium-" });
    let browser: Browser | null = null;
    try {
      await demo.waitForStdout("Press Ctrl-C", 30_000);
      const token = /Admin token:\s+(\S+)/.exec(demo.stdout)?.[1] as string;
      browser = await launch(profile);
      const page = browser.pages()[0] ?? await browser.newPage();
      await page.goto(`http://${DEMO_ADMIN}/`);
      await page.fill("#token", token);
      await page.press("#token", "Enter");
      const rows = page.locator("tr[data-backend]");
      await eventually(async () => (await rows.count()) === 3, 10_000, "the three demo backends");
      // Every demo backend reports its load: the feedback column shows it, and the bars follow it.
      await eventually(
        async () => (await page.locator("td.feedback", { hasText: "utilization" }).count()) === 3,
        10_000,
        "feedback from all three demo backends",
      );
      // The bars' widths, as the page's script sets them (in the style attribute).
      const widths = () =>
        page.locator("tr[data-backend] .fill").evaluateAll((fills) =>
          fills.map((f) => f.getAttribute("style"))
        );
      const before = await widths();
      await eventually(
        async () => JSON.stringify(await widths()) !== JSON.stringify(before),
        10_000,
        "a weight bar to move",
      );
      await Deno.mkdir(OUT, { recursive: true });
      await page.screenshot({ path: `${OUT}dashboard-demo.png`, fullPage: true, animations: "disabled" });
      demo.kill("SIGINT");
      assert.equal((await demo.status()).code, 0);
    } finally {
      await browser?.close();
      await demo.stop();
      await Deno.remove(profile, { recursive: true });
    }
  },
});

Deno.test({
  name: ignored(HISTORY_NAME),
  ignore: !installed,
  async fn() {
    // The admin app in this process, on a real socket, over a history only the test samples: the test
    // decides what the page has to chart, and when a new sample comes.
    const backends = Array.from({ length: 10 }, (_, i) => `10.0.0.${11 + i}:80`);
    const agents = ["agent-1", "agent-2"];
    const parsed = parseConfig(JSON.stringify({
      manager: { tokens: { admin: ADMIN_TOKEN, cluster: "test-cluster-token-0123456789" } },
      services: [{
        name: "web",
        listen: "127.0.0.1:8080",
        backends: backends.map((address) => ({ address, weight: 100 })),
      }],
    }));
    assert.deepEqual(parsed.problems, []);
    const model = new ClusterModel(parsed.config as Config, { seed: 7 });
    const history = new History();
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      testAdminApp(model, ADMIN_TOKEN, undefined, undefined, history).fetch,
    );
    const profile = await Deno.makeTempDir({ prefix: "switchyard-chromium-" });
    let browser: Browser | null = null;
    // Sample i of a run where backend 0 takes nothing (every value 0), backend 1 ramps up from 0 (a slow
    // start), and the others take i × (their number) new connections per sample.
    let samples = 0;
    const sample = () => {
      const i = samples++;
      const at = Date.now() - 5_000 * (40 - i);
      const backendSamples: BackendSample[] = backends.map((backend, n) => ({
        service: "web",
        backend,
        started: n === 0 ? 0 : i * i * n,
        open: n === 0 ? 0 : (i * n) % 17,
        weight: n === 0 ? 0 : n === 1 ? Math.min(100, 10 * i) : 100,
      }));
      const agentSamples: AgentSample[] = agents.map((id, n) => ({
        id,
        served: 30 * i,
        handedOff: (n + 1) * 7 * i,
        decided: (n + 2) * 11 * i,
      }));
      history.record(at, { backends: backendSamples, agents: agentSamples });
    };
    try {
      browser = await launch(profile);
      const page = browser.pages()[0] ?? await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (error) => errors.push(String(error)));
      page.on("console", (message) => {
        if (message.type() === "error") errors.push(message.text());
      });
      await page.goto(`http://127.0.0.1:${server.addr.port}/`);
      await page.fill("#token", ADMIN_TOKEN);
      await page.press("#token", "Enter");
      await page.locator("#login").waitFor({ state: "hidden" });

      // No sample yet: every chart says so, and draws no line.
      const web = '[data-service="web"]';
      for (const chart of ["connections", "open", "weight"]) {
        await page.locator(`${web} figure[data-chart="${chart}"] text.chart-empty`, {
          hasText: "No samples yet",
        })
          .waitFor();
      }
      await page.locator('figure[data-chart="decisions"] text.chart-empty', { hasText: "No samples yet" })
        .waitFor();
      assert.deepEqual(await chartPoints(page, web, "open"), {});

      // One sample: a point per backend where a value needs one sample; a rate needs two.
      sample();
      await eventually(
        async () =>
          JSON.stringify(await chartPoints(page, web, "open")) === JSON.stringify(each(backends, 1)),
        5_000,
        "a point per backend",
      );
      assert.deepEqual(await chartPoints(page, web, "weight"), each(backends, 1));
      await page.locator(`${web} figure[data-chart="connections"] text.chart-empty`, {
        hasText: "No values yet",
      })
        .waitFor();

      // Many samples: every line goes through each of them (a rate through all but the first).
      for (let i = 0; i < 29; i++) sample();
      await eventually(
        async () =>
          JSON.stringify(await chartPoints(page, web, "open")) === JSON.stringify(each(backends, 30)),
        5_000,
        "30 points per backend",
      );
      assert.deepEqual(await chartPoints(page, web, "weight"), each(backends, 30));
      assert.deepEqual(await chartPoints(page, web, "connections"), each(backends, 29));
      assert.deepEqual(await chartPoints(page, "#agent-history", "decisions"), each(agents, 29));
      assert.deepEqual(await chartPoints(page, "#agent-history", "handoffs"), each(agents, 29));
      assert.equal(await page.locator(`${web} text.chart-empty`).count(), 0);

      // A backend at 0 throughout lies on the axis; the one slowly starting climbs, then levels.
      const weights = await chartLines(page, web, "weight");
      const zero = weights[backends[0]!]!;
      assert.equal(new Set(zero).size, 1, "a flat line");
      const ramp = weights[backends[1]!]!;
      assert.equal(zero[0], ramp[0], "both start at 0, on the axis");
      assert.ok(ramp[10]! < ramp[0]!, "the slow start climbs");
      assert.equal(ramp[10], ramp.at(-1), "and levels off at the top");

      // Ten backends: each in the legend, each drawn differently (past eight colors, dashed).
      const legend = await page.locator(`${web} .legend li`).evaluateAll((items) =>
        items.map((item) => {
          const line = item.querySelector("line");
          return [
            item.getAttribute("data-series"),
            line?.getAttribute("stroke"),
            line?.getAttribute("stroke-dasharray"),
          ];
        })
      );
      assert.deepEqual(legend.map(([name]) => name), backends);
      assert.equal(new Set(legend.map(([, color, dash]) => `${color} ${dash}`)).size, backends.length);
      await Deno.mkdir(OUT, { recursive: true });
      await page.screenshot({ path: `${OUT}dashboard-history.png`, fullPage: true, animations: "disabled" });

      // A new sample: the page's next refresh moves every chart on.
      const before = await chartLines(page, web, "open");
      sample();
      await eventually(
        async () =>
          JSON.stringify(await chartPoints(page, web, "open")) === JSON.stringify(each(backends, 31)),
        5_000,
        "the next sample",
      );
      const after = await chartLines(page, web, "open");
      assert.notDeepEqual(after, before);
      assert.deepEqual(await chartPoints(page, "#agent-history", "decisions"), each(agents, 30));
      assert.deepEqual(errors, [], "no script error or CSP violation");
    } finally {
      await browser?.close();
      await server.shutdown();
      model.close();
      await Deno.remove(profile, { recursive: true });
    }
  },
});
