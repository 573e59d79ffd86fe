/**
 * The dashboard in a real browser: Debian's chromium, driven by playwright-core, opens the manager's page
 * of a running cluster, is refused a wrong token, takes the right one, shows every backend and agent,
 * drains a backend and brings it back, and leaves a screenshot in tests/out/; and the demo's dashboard
 * shows the weights its backends' feedback moves. Skipped when chromium is not installed
 * (`apt-get install -y chromium`; `bash .ci/run` installs it).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
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
// Fixed ports, as the demo's are, below the ephemeral range and apart from demo_test's and bundle_test's.
const DEMO_LISTEN = "127.0.0.1:18082";
const DEMO_ADMIN = "127.0.0.1:19092";

type Browser = Awaited<ReturnType<typeof chromium.launchPersistentContext>>;

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
