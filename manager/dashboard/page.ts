/**
 * The dashboard's page: HTML, CSS and script in one string, embedded in the binary (no CDN, no file read
 * at run time). `__NONCE__` is replaced per response with the nonce the Content-Security-Policy allows.
 * What the script does is in `client.ts`.
 */
import * as chart from "./chart.ts";
import { dashboardClient } from "./client.ts";

const STYLE = `
:root {
  --bg: #f4f6f9; --card: #ffffff; --ink: #17202b; --muted: #5f6b7a; --line: #e2e7ee; --track: #e9edf3;
  --accent: #2f6fde; --up: #1f9d55; --up-bg: #e3f5ea; --drain: #b7791f; --drain-bg: #fdf1dc;
  --down: #c53030; --down-bg: #fde8e8; --unknown: #6b7785; --unknown-bg: #edf0f4;
  --mono: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f141b; --card: #18202a; --ink: #e6ebf1; --muted: #97a3b3; --line: #283341; --track: #253040;
    --accent: #6ea1ff; --up: #48c27a; --up-bg: #173526; --drain: #e0a94a; --drain-bg: #3a2d14;
    --down: #f07171; --down-bg: #3d1c1c; --unknown: #9aa5b3; --unknown-bg: #2a3340;
  }
}
* { box-sizing: border-box; }
html, body { margin: 0; background: var(--bg); color: var(--ink); }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif; }
header {
  display: flex; align-items: center; gap: 16px; padding: 12px 24px; background: var(--card);
  border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 2;
}
.brand { font-weight: 700; font-size: 17px; letter-spacing: .2px; }
.brand span { font-weight: 400; color: var(--muted); margin-left: 6px; }
.summary { display: flex; gap: 18px; color: var(--muted); margin-left: 12px; }
.summary b { color: var(--ink); font-variant-numeric: tabular-nums; }
.summary b.warn { color: var(--down); }
.status { margin-left: auto; display: flex; align-items: center; gap: 8px; color: var(--muted); }
.dot { width: 9px; height: 9px; border-radius: 50%; background: var(--unknown); }
.dot.live { background: var(--up); box-shadow: 0 0 0 3px var(--up-bg); }
.dot.down { background: var(--down); box-shadow: 0 0 0 3px var(--down-bg); }
button {
  font: inherit; border: 1px solid var(--line); background: var(--card); color: var(--ink);
  border-radius: 6px; padding: 4px 12px; cursor: pointer;
}
button:hover { border-color: var(--accent); color: var(--accent); }
button:disabled { opacity: .5; cursor: default; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
main {
  display: grid; grid-template-columns: minmax(0, 2fr) minmax(320px, 1fr); gap: 20px; padding: 20px 24px;
  max-width: 1500px; margin: 0 auto;
}
@media (max-width: 1000px) { main { grid-template-columns: minmax(0, 1fr); } }
.column { display: flex; flex-direction: column; gap: 20px; min-width: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px; }
.card h2 { margin: 0; font-size: 15px; }
.card-head { display: flex; align-items: baseline; gap: 10px; flex-wrap: wrap; margin-bottom: 12px; }
.card-head .meta { color: var(--muted); }
.mono { font-family: var(--mono); font-size: 13px; }
.chip {
  display: inline-block; padding: 1px 8px; border-radius: 999px; background: var(--track);
  color: var(--muted); font-size: 12px;
}
table { width: 100%; border-collapse: collapse; }
th {
  text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .4px; padding: 0 10px 8px 0; border-bottom: 1px solid var(--line); white-space: nowrap;
}
td { padding: 10px 10px 10px 0; border-bottom: 1px solid var(--line); vertical-align: middle; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.weight { width: 30%; min-width: 180px; }
td.feedback { white-space: nowrap; }
.sub { color: var(--muted); font-size: 12px; }
.badge {
  display: inline-block; min-width: 52px; text-align: center; padding: 2px 8px; border-radius: 6px;
  font-size: 12px; font-weight: 600;
}
.badge.up { color: var(--up); background: var(--up-bg); }
.badge.drain { color: var(--drain); background: var(--drain-bg); }
.badge.down { color: var(--down); background: var(--down-bg); }
.badge.unknown { color: var(--unknown); background: var(--unknown-bg); }
.bar { position: relative; height: 12px; border-radius: 6px; background: var(--track); overflow: hidden; }
.fill {
  position: absolute; inset: 0 auto 0 0; border-radius: 6px; background: var(--accent);
  transition: width .8s ease;
}
.fill.drain { background: var(--drain); } .fill.down { background: var(--down); }
.mark[hidden] { display: none; }
.mark { position: absolute; top: 0; bottom: 0; width: 2px; background: var(--muted); opacity: .55; }
.bar-label { display: flex; justify-content: space-between; margin-top: 4px; font-size: 12px; color: var(--muted); }
.bar-label b { color: var(--ink); font-variant-numeric: tabular-nums; }
.ring-box { display: flex; gap: 18px; align-items: center; }
.ring-box svg { flex: none; }
.ring-track { stroke: var(--track); }
.ring-total { font: 700 22px system-ui, sans-serif; fill: var(--ink); }
.ring-caption { font: 12px system-ui, sans-serif; fill: var(--muted); }
.agents { list-style: none; margin: 0; padding: 0; flex: 1; min-width: 0; }
.agents li { display: grid; grid-template-columns: 12px 1fr auto; gap: 4px 8px; padding: 6px 0; border-bottom: 1px solid var(--line); }
.agents li:last-child { border-bottom: 0; }
.swatch { width: 12px; height: 12px; border-radius: 3px; margin-top: 4px; }
.agents .id { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.agents .claim { font-variant-numeric: tabular-nums; font-weight: 600; }
.agents .sub { grid-column: 2 / 4; }
.events { list-style: none; margin: 0; padding: 0; max-height: 460px; overflow-y: auto; }
.events li { display: grid; grid-template-columns: 62px 70px 1fr; gap: 8px; padding: 6px 0; border-bottom: 1px solid var(--line); }
.events time { color: var(--muted); font-variant-numeric: tabular-nums; font-size: 12px; padding-top: 1px; }
.kind { font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .3px; padding-top: 2px; }
.kind.feedback { color: var(--accent); } .kind.state, .kind.operator { color: var(--drain); }
.kind.health, .kind.agent { color: var(--up); } .kind.config { color: var(--muted); }
.kind.warning { color: var(--down); }
.empty { color: var(--muted); padding: 8px 0; }
.agents li.empty, .events li.empty { display: block; }
.history { margin-top: 16px; padding-top: 12px; border-top: 1px solid var(--line); }
.history-head { display: flex; align-items: baseline; gap: 10px; margin-bottom: 6px; }
.history-head h3 { margin: 0; font-size: 13px; }
.history-head .meta, .card-head .meta.small { color: var(--muted); font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 6px 18px; }
.chart { margin: 0; min-width: 0; }
.chart figcaption { font-size: 12px; font-weight: 600; color: var(--muted); }
.chart .plot { display: block; width: 100%; height: 130px; }
.plot .grid { stroke: var(--line); stroke-width: 1; }
.plot .tick { font: 10px system-ui, sans-serif; fill: var(--muted); font-variant-numeric: tabular-nums; }
.plot .chart-empty { font: 12px system-ui, sans-serif; fill: var(--muted); }
.plot .line { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
.legend { list-style: none; margin: 8px 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 16px; }
.legend li { display: flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted); }
.legend svg { flex: none; }
#login {
  position: fixed; inset: 0; display: flex; align-items: center; justify-content: center;
  background: rgba(15, 20, 27, .55); z-index: 10;
}
#login[hidden] { display: none; }
#login form { background: var(--card); border-radius: 12px; padding: 24px; width: min(420px, 92vw); box-shadow: 0 10px 40px rgba(0,0,0,.25); }
#login h1 { margin: 0 0 6px; font-size: 18px; }
#login p { margin: 0 0 16px; color: var(--muted); }
#login input {
  width: 100%; font: 14px var(--mono); padding: 8px 10px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg); color: var(--ink); margin-bottom: 12px;
}
#login .error { color: var(--down); min-height: 20px; margin-bottom: 8px; }
#login .actions { display: flex; justify-content: flex-end; }
`;

/**
 * Every function `chart.ts` exports, by source text: declarations the script calls by their names.
 * Exported for the test that runs them from this text.
 */
export const CHART_SOURCE: string = Object.values(chart)
  .filter((value) => typeof value === "function")
  .map(String)
  .join("\n\n");

/**
 * The page's script: `client.ts` and `chart.ts` by their source text. A function's `toString()` is the
 * JavaScript that `deno run` and `deno compile` load (types removed), so the script is checked and linted
 * as TypeScript, needs no build step and no file read at run time, and is the same in the compiled binary.
 * The one rule: `dashboardClient` uses nothing from its module but types and `chart.ts`'s functions.
 */
const SCRIPT = `(() => {\n"use strict";\n\n${CHART_SOURCE}\n\n(${dashboardClient})();\n})();\n`;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>switchyard</title>
<link rel="icon" href="data:,">
<style nonce="__NONCE__">${STYLE}</style>
</head>
<body>
<header>
  <div class="brand">switchyard<span>cluster</span></div>
  <div class="summary">
    <span><b id="sum-services">–</b> services</span>
    <span><b id="sum-backends">–</b> backends up</span>
    <span><b id="sum-agents">–</b> agents</span>
    <span><b id="sum-open">–</b> open connections</span>
    <span><b id="sum-leader">–</b></span>
  </div>
  <div class="status"><span id="status-dot" class="dot"></span><span id="status-text">Waiting for the token</span></div>
  <button id="forget" type="button">Forget token</button>
</header>
<main>
  <div class="column" id="services"><div id="services-empty" class="card empty" hidden>No services are configured.</div></div>
  <div class="column">
    <section class="card">
      <div class="card-head"><h2>Agents</h2><span class="meta">share of the flow-hash space each claims</span></div>
      <div class="ring-box">
        <svg id="ring" width="160" height="160" viewBox="0 0 160 160" role="img" aria-label="Claims of the agents"></svg>
        <ul id="agents" class="agents"></ul>
      </div>
    </section>
    <section class="card" id="agent-history">
      <div class="card-head"><h2>Agents over time</h2><span class="meta small" id="agent-history-window"></span></div>
      <div class="charts">
        <figure class="chart" data-chart="decisions"><figcaption>Decisions/s</figcaption><svg id="agent-decisions" class="plot" role="img" aria-label="Decisions per second of each agent"></svg></figure>
        <figure class="chart" data-chart="handoffs"><figcaption>Handoffs/s</figcaption><svg id="agent-handoffs" class="plot" role="img" aria-label="Handoffs per second of each agent"></svg></figure>
      </div>
      <ul id="agent-legend" class="legend"></ul>
    </section>
    <section class="card">
      <div class="card-head"><h2>Recent events</h2><span class="meta">feedback, states, agents</span></div>
      <ul id="events" class="events"><li class="empty">No events yet.</li></ul>
    </section>
  </div>
</main>
<div id="login" hidden>
  <form id="login-form" method="post" autocomplete="off">
    <h1>switchyard dashboard</h1>
    <p>Enter the manager's admin token. It stays in this tab (session storage) and is sent only as a bearer token.</p>
    <input id="token" name="token" type="password" placeholder="admin token" aria-label="Admin token" spellcheck="false">
    <div id="login-error" class="error"></div>
    <div class="actions"><button class="primary" type="submit">Open dashboard</button></div>
  </form>
</div>
<script nonce="__NONCE__">${SCRIPT}</script>
</body>
</html>
`;

/** The page's script alone, for a test that parses it. */
export const DASHBOARD_SCRIPT = SCRIPT;
