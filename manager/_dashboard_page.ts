/**
 * The dashboard's page: HTML, CSS and script in one string, embedded in the binary (no CDN, no file read
 * at run time). `__NONCE__` is replaced per response with the nonce the Content-Security-Policy allows.
 *
 * The script asks for the admin token once and keeps it in `sessionStorage` (never in a URL), then polls
 * `/v1/services`, `/v1/agents`, `/v1/events` and `/v1/cluster` (who leads) every second with it as a bearer
 * token, and updates the page in place so that weight bars glide from one value to the next. Every value is put into the page as text
 * (`textContent`, attributes), never as HTML.
 */

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

const SCRIPT = `
(function () {
  "use strict";
  var TOKEN_KEY = "switchyard.adminToken";
  var REFRESH_MS = 1000;
  var MAX_EVENTS = 100;
  var PALETTE = ["#2f6fde", "#1f9d55", "#d97706", "#9333ea", "#db2777", "#0891b2", "#65a30d", "#dc2626"];
  var SVG = "http://www.w3.org/2000/svg";
  var token = sessionStorage.getItem(TOKEN_KEY);
  var timer = null;
  var busy = false;
  var lastEvent = 0;
  var cards = new Map();

  function byId(id) { return document.getElementById(id); }

  function h(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var key in attrs || {}) {
      if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    }
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour12: false });
  }

  function ago(seconds) {
    if (seconds < 1) return "just now";
    if (seconds < 60) return seconds.toFixed(0) + " s ago";
    if (seconds < 3600) return (seconds / 60).toFixed(0) + " min ago";
    return (seconds / 3600).toFixed(1) + " h ago";
  }

  function number(value) {
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  function AuthError() { this.message = "The manager refused the token"; }

  async function api(path, init) {
    var options = Object.assign({ cache: "no-store" }, init || {});
    options.headers = Object.assign({ authorization: "Bearer " + token }, options.headers || {});
    var response = await fetch(path, options);
    if (response.status === 401) throw new AuthError();
    var body = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    return body;
  }

  function setStatus(kind, text) {
    byId("status-dot").className = "dot " + kind;
    setText(byId("status-text"), text);
  }

  function showLogin(message) {
    byId("login").hidden = false;
    setText(byId("login-error"), message || "");
    var input = byId("token");
    input.value = "";
    input.focus();
  }

  function stop() {
    if (timer !== null) clearInterval(timer);
    timer = null;
  }

  function start() {
    byId("login").hidden = true;
    stop();
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  function forget(message) {
    stop();
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function refresh() {
    if (busy || token === null) return;
    busy = true;
    try {
      var results = await Promise.all([
        api("/v1/services"),
        api("/v1/agents"),
        api("/v1/events?after=" + lastEvent),
        api("/v1/cluster"),
      ]);
      renderServices(results[0]);
      renderAgents(results[1], results[0].version);
      renderEvents(results[2]);
      renderLeader(results[3]);
      setStatus("live", "Live · updated " + clock(new Date()) + " · state v" + results[0].version);
    } catch (error) {
      if (error instanceof AuthError) forget("The manager refused that token; enter the admin token again.");
      else setStatus("down", "Cannot reach the manager: " + error.message);
    } finally {
      busy = false;
    }
  }

  // Services and backends

  function serviceCard(name) {
    var card = cards.get(name);
    if (card) return card;
    var title = h("h2", { class: "mono", text: name });
    var meta = h("span", { class: "meta" });
    var chips = h("span");
    var body = h("tbody");
    var table = h("table", {}, [
      h("thead", {}, [h("tr", {}, [
        h("th", { text: "Backend" }),
        h("th", { text: "State" }),
        h("th", { text: "Effective weight" }),
        h("th", { class: "num", text: "Configured" }),
        h("th", { text: "Feedback" }),
        h("th", { class: "num", text: "Open" }),
        h("th", { text: "" }),
      ])]),
      body,
    ]);
    var root = h("section", { class: "card service", "data-service": name }, [
      h("div", { class: "card-head" }, [title, meta, chips]),
      table,
    ]);
    byId("services").appendChild(root);
    card = { root: root, meta: meta, chips: chips, body: body, rows: new Map() };
    cards.set(name, card);
    return card;
  }

  function backendRow(card, service, address) {
    var row = card.rows.get(address);
    if (row) return row;
    var state = h("span", { class: "badge" });
    var health = h("div", { class: "sub" });
    var fill = h("div", { class: "fill" });
    var mark = h("div", { class: "mark" });
    var effective = h("b");
    var share = h("span");
    var configured = h("td", { class: "num" });
    var feedback = h("div");
    var feedbackSub = h("div", { class: "sub" });
    var open = h("td", { class: "num" });
    var button = h("button", { type: "button" });
    var why = h("div", { class: "sub" });
    var tr = h("tr", { "data-backend": address }, [
      h("td", {}, [h("div", { class: "mono", text: address }), why]),
      h("td", { class: "state" }, [state, health]),
      h("td", { class: "weight" }, [
        h("div", { class: "bar" }, [fill, mark]),
        h("div", { class: "bar-label" }, [effective, share]),
      ]),
      configured,
      h("td", { class: "feedback" }, [feedback, feedbackSub]),
      open,
      h("td", { class: "num" }, [button]),
    ]);
    button.addEventListener("click", function () { setState(service, address, button); });
    card.body.appendChild(tr);
    row = {
      tr: tr, state: state, health: health, fill: fill, mark: mark, effective: effective, share: share,
      configured: configured, feedback: feedback, feedbackSub: feedbackSub, open: open, button: button, why: why,
    };
    card.rows.set(address, row);
    return row;
  }

  function feedbackText(feedback) {
    if (!feedback) return ["none", ""];
    var what = feedback.source === "weight" ? "weight " + feedback.reported_weight + "%"
      : feedback.source === "load" ? "utilization " + Number(feedback.utilization).toFixed(2)
      : "state " + feedback.state;
    if (feedback.source === "load" && feedback.qps !== undefined) what += " · " + feedback.qps + " qps";
    if (feedback.source !== "state" && feedback.state !== "up") what += " · " + feedback.state;
    return [what, ago(feedback.age_s) + " · " + Math.ceil(feedback.expires_in_s) + " s left"];
  }

  function renderServices(data) {
    var seen = new Set();
    var up = 0;
    var total = 0;
    var open = 0;
    byId("services-empty").hidden = data.services.length > 0;
    data.services.forEach(function (service) {
      seen.add(service.name);
      var card = serviceCard(service.name);
      setText(card.meta, service.listen);
      setText(card.chips, "");
      card.chips.appendChild(h("span", { class: "chip", text: "decide: " + service.decide }));
      card.chips.appendChild(document.createTextNode(" "));
      card.chips.appendChild(h("span", { class: "chip", text: "handoff: " + service.handoff }));
      var scale = 1;
      var sum = 0;
      service.backends.forEach(function (b) {
        scale = Math.max(scale, b.weight, b.effective_weight);
        sum += b.effective_weight;
      });
      var present = new Set();
      service.backends.forEach(function (b) {
        present.add(b.address);
        total++;
        if (b.state === "up") up++;
        open += b.open_connections;
        var row = backendRow(card, service.name, b.address);
        row.state.className = "badge " + b.state;
        setText(row.state, b.state);
        setText(row.health, "health " + b.health);
        row.fill.className = "fill " + b.state;
        row.fill.style.width = (100 * b.effective_weight / scale).toFixed(2) + "%";
        row.mark.style.left = "calc(" + (100 * b.weight / scale).toFixed(2) + "% - 2px)";
        row.mark.hidden = b.weight >= scale;
        row.mark.title = "configured weight " + b.weight;
        setText(row.effective, number(b.effective_weight));
        setText(row.share, sum > 0 ? (100 * b.effective_weight / sum).toFixed(0) + "% of new flows" : "no new flows");
        setText(row.configured, String(b.weight));
        var fb = feedbackText(b.feedback);
        setText(row.feedback, fb[0]);
        setText(row.feedbackSub, fb[1]);
        setText(row.open, String(b.open_connections));
        setText(row.why, b.why.replace(/^[^:]*: /, ""));
        row.tr.title = b.why;
        var drained = b.operator_state === "drain";
        if (!row.button.disabled) {
          setText(row.button, drained ? "Undrain" : "Drain");
          row.button.dataset.action = drained ? "up" : "drain";
        }
      });
      card.rows.forEach(function (row, address) {
        if (!present.has(address)) {
          row.tr.remove();
          card.rows.delete(address);
        }
      });
    });
    cards.forEach(function (card, name) {
      if (!seen.has(name)) {
        card.root.remove();
        cards.delete(name);
      }
    });
    setText(byId("sum-services"), String(data.services.length));
    setText(byId("sum-backends"), up + " / " + total);
    setText(byId("sum-open"), String(open));
  }

  async function setState(service, address, button) {
    var state = button.dataset.action;
    button.disabled = true;
    try {
      await api("/v1/services/" + encodeURIComponent(service) + "/backends/" + encodeURIComponent(address) + "/state", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ state: state }),
      });
    } catch (error) {
      if (error instanceof AuthError) return forget("The manager refused that token; enter the admin token again.");
      setStatus("down", "Cannot set " + address + " to " + state + ": " + error.message);
    } finally {
      button.disabled = false;
    }
    await refresh();
  }

  // Agents and their claims

  // Who leads: this manager alone, or which of several managers (manager.ha).

  function renderLeader(data) {
    var text;
    if (data.role === "single") text = "one manager";
    else if (data.leader === null) text = "no manager leads now";
    else if (data.role === "leader") text = "this manager leads (" + data.leader.id + ")";
    else text = "standby; " + data.leader.id + " at " + data.leader.admin + " leads";
    setText(byId("sum-leader"), text);
    byId("sum-leader").className = data.role === "standby" && data.leader === null ? "warn" : "";
  }

  function renderAgents(data, version) {
    var ring = byId("ring");
    while (ring.firstChild) ring.removeChild(ring.firstChild);
    var r = 62;
    var c = 2 * Math.PI * r;
    ring.appendChild(svg("circle", { cx: 80, cy: 80, r: r, fill: "none", class: "ring-track", "stroke-width": 22 }));
    var offset = 0;
    var gap = data.agents.length > 1 ? 2 : 0;
    data.agents.forEach(function (agent, index) {
      var length = agent.claim * c;
      var arc = svg("circle", {
        cx: 80, cy: 80, r: r, fill: "none", stroke: PALETTE[index % PALETTE.length], "stroke-width": 22,
        "stroke-dasharray": Math.max(0, length - gap) + " " + (c - Math.max(0, length - gap)),
        "stroke-dashoffset": String(-offset), transform: "rotate(-90 80 80)", "data-agent": agent.id,
      });
      var title = svg("title", {});
      title.textContent = agent.id + " claims " + (100 * agent.claim).toFixed(1) + "% of flows";
      arc.appendChild(title);
      ring.appendChild(arc);
      offset += length;
    });
    var count = svg("text", { x: 80, y: 80, "text-anchor": "middle", class: "ring-total" });
    count.textContent = String(data.agents.length);
    var caption = svg("text", { x: 80, y: 98, "text-anchor": "middle", class: "ring-caption" });
    caption.textContent = data.agents.length === 1 ? "agent" : "agents";
    ring.appendChild(count);
    ring.appendChild(caption);

    var list = byId("agents");
    while (list.firstChild) list.removeChild(list.firstChild);
    if (data.agents.length === 0) list.appendChild(h("li", { class: "empty", text: "No agent is connected." }));
    data.agents.forEach(function (agent, index) {
      var swatch = h("span", { class: "swatch" });
      swatch.style.background = PALETTE[index % PALETTE.length];
      var current = agent.state_version === version ? "state current" : "state v" + agent.state_version + " (behind)";
      list.appendChild(h("li", { "data-agent": agent.id }, [
        swatch,
        h("span", { class: "id mono", text: agent.id }),
        h("span", { class: "claim", text: (100 * agent.claim).toFixed(1) + "%" }),
        h("span", {
          class: "sub",
          text: agent.connections.served + " served · " + agent.connections.handed_off + " handed off · " +
            agent.connections.open + " open · heartbeat " + ago(agent.last_heartbeat_s) + " · " + current,
        }),
      ]));
    });
    setText(byId("sum-agents"), String(data.agents.length));
  }

  // Events

  function renderEvents(data) {
    var list = byId("events");
    if (data.last < lastEvent) {
      while (list.firstChild) list.removeChild(list.firstChild);
      lastEvent = 0;
    }
    data.events.forEach(function (event) {
      if (event.seq <= lastEvent) return;
      lastEvent = event.seq;
      var empty = list.querySelector(".empty");
      if (empty) empty.remove();
      list.insertBefore(h("li", { "data-kind": event.kind }, [
        h("time", { text: clock(new Date(event.at)) }),
        h("span", { class: "kind " + event.kind + (event.severity === "warning" ? " warning" : ""), text: event.kind }),
        h("span", { text: event.message }),
      ]), list.firstChild);
    });
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
    if (list.children.length === 0) list.appendChild(h("li", { class: "empty", text: "No events yet." }));
  }

  byId("login-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    var entered = byId("token").value.trim();
    if (entered === "") return;
    token = entered;
    try {
      await api("/v1/services");
    } catch (error) {
      token = null;
      showLogin(error instanceof AuthError ? "The manager refused that token." : "Cannot reach the manager: " + error.message);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  byId("forget").addEventListener("click", function () { forget("Enter the admin token to see the cluster."); });

  if (token) start();
  else showLogin("");
})();
`;

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
