/**
 * The README's picture of the dashboard, `docs/dashboard.png`:
 *
 *   deno run -A scripts/screenshot.ts [--seconds 75] [--output docs/dashboard.png]
 *                                     [--listen 127.0.0.1:18380] [--admin 127.0.0.1:19380]
 *
 * Runs `switchyard demo` (on ports of its own, so that it runs beside a demo on the default ones), sends its
 * service `web` new connections at a rate that swings between about 5 and 45 a second, each held open for
 * 1 to 6 s, so that the history charts have curves; then, the traffic still running, opens the dashboard in
 * Debian's chromium, driven by playwright-core (never a downloaded browser), and takes a PNG of the window.
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { parseHostPort } from "../cluster/address.ts";

export const SCREENSHOT_DEFAULTS = {
  /** How long traffic runs before the picture: the manager samples every 5 s. */
  seconds: 75,
  output: fileURLToPath(new URL("../docs/dashboard.png", import.meta.url)),
  listen: "127.0.0.1:18380",
  admin: "127.0.0.1:19380",
  chromium: "/usr/bin/chromium",
  viewport: { width: 1440, height: 900 },
  /** New connections per second: `middle` ± `swing`, a sine over `periodS`. */
  rate: { middle: 25, swing: 20, periodS: 40 },
  /** How long each connection stays open after its answer, at least and at most. */
  holdMs: { min: 1_000, max: 6_000 },
} as const;

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const encoder = new TextEncoder();

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: String(SCREENSHOT_DEFAULTS.seconds) },
    output: { type: "string", default: SCREENSHOT_DEFAULTS.output },
    listen: { type: "string", default: SCREENSHOT_DEFAULTS.listen },
    admin: { type: "string", default: SCREENSHOT_DEFAULTS.admin },
  },
});
const seconds = Number(values.seconds);
if (!(seconds > 0)) {
  throw new RangeError(`Cannot run traffic for --seconds ${values.seconds}: expected a positive number`);
}
const listen = parseHostPort(values.listen);

const demo = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-all",
    "--unstable-net",
    MAIN,
    "demo",
    "--listen",
    values.listen,
    "--admin",
    values.admin,
  ],
  env: { NO_COLOR: "1" },
  stdin: "null",
  stdout: "piped",
  stderr: "null",
}).spawn();
const profile = await Deno.makeTempDir({ prefix: "switchyard-screenshot-" });
try {
  const token = await adminToken(demo.stdout);
  console.log(`Demo running; sending it traffic for ${seconds} s`);
  const stop = new AbortController();
  const traffic = drive(listen, stop.signal);
  try {
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    await screenshot(token);
  } finally {
    stop.abort();
    await traffic;
  }
  console.log(`Wrote ${values.output} (${(await Deno.stat(values.output)).size} bytes)`);
} finally {
  demo.kill("SIGINT");
  await demo.status;
  await Deno.remove(profile, { recursive: true });
}

/** The admin token the demo prints, once it says it runs. */
async function adminToken(stdout: ReadableStream<Uint8Array<ArrayBuffer>>): Promise<string> {
  let text = "";
  const lines = stdout.pipeThrough(new TextDecoderStream());
  const reader = lines.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      throw new Error(
        `Cannot find the admin token: the demo stopped, having printed ${JSON.stringify(text)}`,
      );
    }
    text += value;
    const token = /Admin token:\s+(\S+)/.exec(text)?.[1];
    if (token !== undefined && text.includes("Press Ctrl-C")) {
      // The rest of its output is not needed, but is read so that the demo never blocks on a full pipe.
      (async () => {
        while (!(await reader.read()).done) { /* discard */ }
      })();
      return token;
    }
  }
}

/** New connections to `to` at the swinging rate until `stop`, each asking for / and held a while. */
async function drive(to: { host: string; port: number }, stop: AbortSignal): Promise<void> {
  const { rate, holdMs } = SCREENSHOT_DEFAULTS;
  const open = new Set<Promise<void>>();
  const started = performance.now();
  let owed = 0;
  while (!stop.aborted) {
    const elapsedS = (performance.now() - started) / 1000;
    owed += (rate.middle + rate.swing * Math.sin((2 * Math.PI * elapsedS) / rate.periodS)) / 10;
    for (; owed >= 1; owed--) {
      const visit = visitOnce(to, holdMs.min + Math.random() * (holdMs.max - holdMs.min));
      open.add(visit);
      visit.finally(() => open.delete(visit));
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await Promise.all(open);
}

async function visitOnce(to: { host: string; port: number }, holdMs: number): Promise<void> {
  let conn: Deno.Conn | null = null;
  try {
    conn = await Deno.connect({ hostname: to.host, port: to.port });
    await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: demo\r\n\r\n"));
    await conn.read(new Uint8Array(4096));
    await new Promise((resolve) => setTimeout(resolve, holdMs));
  } catch {
    // A connection refused or reset is the demo's business; the picture needs only most of them.
  } finally {
    conn?.close();
  }
}

async function screenshot(token: string): Promise<void> {
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: SCREENSHOT_DEFAULTS.chromium,
    headless: true,
    viewport: SCREENSHOT_DEFAULTS.viewport,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
    ],
  });
  try {
    const page = browser.pages()[0] ?? await browser.newPage();
    await page.goto(`http://${values.admin}/`);
    await page.fill("#token", token);
    await page.press("#token", "Enter");
    await page.locator('figure[data-chart="connections"] path.line').first().waitFor({ state: "attached" });
    // Two refreshes, so that the bars have finished gliding.
    await page.waitForTimeout(2_000);
    await page.screenshot({ path: values.output, animations: "disabled" });
  } finally {
    await browser.close();
  }
}
