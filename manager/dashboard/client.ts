/// <reference lib="dom" />
/**
 * The dashboard's script, as the browser runs it. `deno check` and `deno lint` read it as any other module
 * (the DOM's types come from the reference above); `page.ts` puts its source into the page.
 *
 * The reference adds the DOM's global types to every program this module is checked in, main.ts's among
 * them: a server module could name `document` unnoticed, and where the DOM and Deno declare a type apart,
 * both must hold (`TextDecoderStream` takes a stream of `Uint8Array<ArrayBuffer>`, as Deno's streams are).
 *
 * The script asks for the admin token once and keeps it in `sessionStorage` (never in a URL), then polls
 * `/v1/services`, `/v1/agents`, `/v1/events`, `/v1/cluster` (who leads) and `/v1/history` every second with
 * it as a bearer token, and updates the page in place so that weight bars glide from one value to the next
 * and the charts of the last 15 minutes move on. Every value is put into the page as text (`textContent`,
 * attributes), never as HTML.
 *
 * `dashboardClient` is embedded by its source text (`Function.prototype.toString`), so its body may use only
 * its own locals, the browser's globals and `chart.ts`'s functions, which `page.ts` embeds beside it; the
 * rest it imports are types, which the transpiler removes.
 */
import type { AgentView, BackendView, ServicesView } from "../admin.ts";
import type { ClusterEvent } from "../events.ts";
import type { HistoryView, Points } from "../history.ts";
import type { ClusterView } from "../role.ts";
import { axisSpan, chartLayout, type ChartSeries, formatDuration, seriesStyle } from "./chart.ts";

interface ServiceCard {
  readonly root: HTMLElement;
  readonly meta: HTMLElement;
  readonly chips: HTMLElement;
  readonly body: HTMLElement;
  readonly rows: Map<string, BackendRow>;
  readonly history: BackendCharts;
}

/** A service's charts of its backends over the last minutes, and their legend. */
interface BackendCharts {
  readonly window: HTMLElement;
  readonly connections: SVGSVGElement;
  readonly open: SVGSVGElement;
  readonly weight: SVGSVGElement;
  readonly legend: HTMLElement;
}

/** A line of a chart, and how it is drawn. */
interface Line extends ChartSeries {
  readonly color: string;
  readonly dash: string;
}

interface BackendRow {
  readonly tr: HTMLElement;
  readonly state: HTMLElement;
  readonly health: HTMLElement;
  readonly fill: HTMLElement;
  readonly mark: HTMLElement;
  readonly effective: HTMLElement;
  readonly share: HTMLElement;
  readonly configured: HTMLElement;
  readonly feedback: HTMLElement;
  readonly feedbackSub: HTMLElement;
  readonly open: HTMLElement;
  readonly button: HTMLButtonElement;
  readonly why: HTMLElement;
}

interface EventsView {
  readonly last: number;
  readonly events: ClusterEvent[];
}

/** Runs the dashboard in the page it is embedded in. */
export function dashboardClient(): void {
  const TOKEN_KEY = "switchyard.adminToken";
  const REFRESH_MS = 1000;
  const MAX_EVENTS = 100;
  const SVG = "http://www.w3.org/2000/svg";
  const CHART_HEIGHT = 130;
  const CHART_MARGIN = { top: 10, right: 10, bottom: 22, left: 40 };
  const REFUSED = "The manager refused that token; enter the admin token again.";
  let token = sessionStorage.getItem(TOKEN_KEY);
  let timer: ReturnType<typeof setInterval> | null = null;
  let busy = false;
  let lastEvent = 0;
  const cards = new Map<string, ServiceCard>();
  /** Each agent's place in the palette, kept while the page is open so that its color never changes. */
  const agentColors = new Map<string, number>();

  class AuthError extends Error {
    constructor() {
      super("The manager refused the token");
    }
  }

  function byId<T extends Element = HTMLElement>(id: string): T {
    const node = document.getElementById(id);
    if (node === null) throw new Error(`The page has no element #${id}`);
    return node as Element as T;
  }

  function h<K extends keyof HTMLElementTagNameMap>(
    tag: K,
    attrs: Record<string, string> = {},
    children: ReadonlyArray<Node | null> = [],
  ): HTMLElementTagNameMap[K] {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.appendChild(child);
    return node;
  }

  function svg<K extends keyof SVGElementTagNameMap>(
    tag: K,
    attrs: Record<string, string | number> = {},
  ): SVGElementTagNameMap[K] {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  function setText(node: Node, text: string): void {
    if (node.textContent !== text) node.textContent = text;
  }

  function clock(date: Date): string {
    return date.toLocaleTimeString([], { hour12: false });
  }

  function ago(seconds: number): string {
    if (seconds < 1) return "just now";
    if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min ago`;
    return `${(seconds / 3600).toFixed(1)} h ago`;
  }

  function number(value: number): string {
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  function messageOf(error: unknown): string {
    return error instanceof Error ? error.message : String(error);
  }

  async function api<T>(
    path: string,
    init: { method?: string; headers?: Record<string, string>; body?: string } = {},
  ): Promise<T> {
    const response = await fetch(path, {
      cache: "no-store",
      ...init,
      headers: { authorization: `Bearer ${token}`, ...init.headers },
    });
    if (response.status === 401) throw new AuthError();
    const body: { error?: string } = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
    return body as T;
  }

  function setStatus(kind: "live" | "down", text: string): void {
    byId("status-dot").className = `dot ${kind}`;
    setText(byId("status-text"), text);
  }

  function showLogin(message: string): void {
    byId("login").hidden = false;
    setText(byId("login-error"), message);
    const input = byId<HTMLInputElement>("token");
    input.value = "";
    input.focus();
  }

  function stop(): void {
    if (timer !== null) clearInterval(timer);
    timer = null;
  }

  function start(): void {
    byId("login").hidden = true;
    stop();
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  function forget(message: string): void {
    stop();
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function refresh(): Promise<void> {
    if (busy || token === null) return;
    busy = true;
    try {
      const [services, agents, events, cluster, history] = await Promise.all([
        api<ServicesView>("/v1/services"),
        api<{ agents: AgentView[] }>("/v1/agents"),
        api<EventsView>(`/v1/events?after=${lastEvent}`),
        api<ClusterView>("/v1/cluster"),
        api<HistoryView>("/v1/history"),
      ]);
      renderServices(services);
      renderAgents(agents.agents, services.version);
      renderEvents(events);
      renderLeader(cluster);
      renderHistory(history);
      setStatus("live", `Live · updated ${clock(new Date())} · state v${services.version}`);
    } catch (error) {
      if (error instanceof AuthError) forget(REFUSED);
      else setStatus("down", `Cannot reach the manager: ${messageOf(error)}`);
    } finally {
      busy = false;
    }
  }

  // Services and backends

  function serviceCard(name: string): ServiceCard {
    const known = cards.get(name);
    if (known) return known;
    const title = h("h2", { class: "mono", text: name });
    const meta = h("span", { class: "meta" });
    const chips = h("span");
    const body = h("tbody");
    const table = h("table", {}, [
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
    const [connections, connectionsFigure] = chartFigure("connections", "New connections/s");
    const [open, openFigure] = chartFigure("open", "Open connections");
    const [weight, weightFigure] = chartFigure("weight", "Effective weight");
    const history = {
      window: h("span", { class: "meta" }),
      connections,
      open,
      weight,
      legend: h("ul", { class: "legend" }),
    };
    const root = h("section", { class: "card service", "data-service": name }, [
      h("div", { class: "card-head" }, [title, meta, chips]),
      table,
      h("div", { class: "history" }, [
        h("div", { class: "history-head" }, [h("h3", { text: "History" }), history.window]),
        h("div", { class: "charts" }, [connectionsFigure, openFigure, weightFigure]),
        history.legend,
      ]),
    ]);
    byId("services").appendChild(root);
    const card = { root, meta, chips, body, rows: new Map<string, BackendRow>(), history };
    cards.set(name, card);
    return card;
  }

  function backendRow(card: ServiceCard, service: string, address: string): BackendRow {
    const known = card.rows.get(address);
    if (known) return known;
    const state = h("span", { class: "badge" });
    const health = h("div", { class: "sub" });
    const fill = h("div", { class: "fill" });
    const mark = h("div", { class: "mark" });
    const effective = h("b");
    const share = h("span");
    const configured = h("td", { class: "num" });
    const feedback = h("div");
    const feedbackSub = h("div", { class: "sub" });
    const open = h("td", { class: "num" });
    const button = h("button", { type: "button" });
    const why = h("div", { class: "sub" });
    const tr = h("tr", { "data-backend": address }, [
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
    button.addEventListener("click", () => setState(service, address, button));
    card.body.appendChild(tr);
    const row = {
      tr,
      state,
      health,
      fill,
      mark,
      effective,
      share,
      configured,
      feedback,
      feedbackSub,
      open,
      button,
      why,
    };
    card.rows.set(address, row);
    return row;
  }

  /** What the feedback column says: the report, and its age and time left. */
  function feedbackText(feedback: BackendView["feedback"]): [string, string] {
    if (!feedback) return ["none", ""];
    let what = feedback.source === "weight"
      ? `weight ${feedback.reported_weight}%`
      : feedback.source === "load"
      ? `utilization ${Number(feedback.utilization).toFixed(2)}`
      : `state ${feedback.state}`;
    if (feedback.source === "load" && feedback.qps !== undefined) what += ` · ${feedback.qps} qps`;
    if (feedback.source !== "state" && feedback.state !== "up") what += ` · ${feedback.state}`;
    return [what, `${ago(feedback.age_s)} · ${Math.ceil(feedback.expires_in_s)} s left`];
  }

  function renderServices(data: ServicesView): void {
    const seen = new Set<string>();
    let up = 0;
    let total = 0;
    let open = 0;
    byId("services-empty").hidden = data.services.length > 0;
    for (const service of data.services) {
      seen.add(service.name);
      const card = serviceCard(service.name);
      setText(card.meta, service.listen);
      setText(card.chips, "");
      card.chips.appendChild(h("span", { class: "chip", text: `decide: ${service.decide}` }));
      card.chips.appendChild(document.createTextNode(" "));
      card.chips.appendChild(h("span", { class: "chip", text: `handoff: ${service.handoff}` }));
      let scale = 1;
      let sum = 0;
      for (const b of service.backends) {
        scale = Math.max(scale, b.weight, b.effective_weight);
        sum += b.effective_weight;
      }
      const present = new Set<string>();
      for (const b of service.backends) {
        present.add(b.address);
        total++;
        if (b.state === "up") up++;
        open += b.open_connections;
        const row = backendRow(card, service.name, b.address);
        row.state.className = `badge ${b.state}`;
        setText(row.state, b.state);
        setText(row.health, `health ${b.health}`);
        row.fill.className = `fill ${b.state}`;
        row.fill.style.width = `${(100 * b.effective_weight / scale).toFixed(2)}%`;
        row.mark.style.left = `calc(${(100 * b.weight / scale).toFixed(2)}% - 2px)`;
        row.mark.hidden = b.weight >= scale;
        row.mark.title = `configured weight ${b.weight}`;
        setText(row.effective, number(b.effective_weight));
        setText(
          row.share,
          sum > 0 ? `${(100 * b.effective_weight / sum).toFixed(0)}% of new flows` : "no new flows",
        );
        setText(row.configured, String(b.weight));
        const [feedback, feedbackSub] = feedbackText(b.feedback);
        setText(row.feedback, feedback);
        setText(row.feedbackSub, feedbackSub);
        setText(row.open, String(b.open_connections));
        setText(row.why, b.why.replace(/^[^:]*: /, ""));
        row.tr.title = b.why;
        const drained = b.operator_state === "drain";
        if (!row.button.disabled) {
          setText(row.button, drained ? "Undrain" : "Drain");
          row.button.dataset.action = drained ? "up" : "drain";
        }
      }
      for (const [address, row] of card.rows) {
        if (!present.has(address)) {
          row.tr.remove();
          card.rows.delete(address);
        }
      }
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.root.remove();
        cards.delete(name);
      }
    }
    setText(byId("sum-services"), String(data.services.length));
    setText(byId("sum-backends"), `${up} / ${total}`);
    setText(byId("sum-open"), String(open));
  }

  async function setState(service: string, address: string, button: HTMLButtonElement): Promise<void> {
    const state = button.dataset.action;
    button.disabled = true;
    try {
      const backend = `${encodeURIComponent(service)}/backends/${encodeURIComponent(address)}`;
      await api(`/v1/services/${backend}/state`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ state }),
      });
    } catch (error) {
      if (error instanceof AuthError) return forget(REFUSED);
      setStatus("down", `Cannot set ${address} to ${state}: ${messageOf(error)}`);
    } finally {
      button.disabled = false;
    }
    await refresh();
  }

  // Who leads: this manager alone, or which of several managers (manager.ha).

  function renderLeader(data: ClusterView): void {
    let text;
    if (data.role === "single") text = "one manager";
    else if (data.leader === null) text = "no manager leads now";
    else if (data.role === "leader") text = `this manager leads (${data.leader.id})`;
    else text = `standby; ${data.leader.id} at ${data.leader.admin} leads`;
    const leader = byId("sum-leader");
    setText(leader, text);
    leader.className = data.role === "standby" && data.leader === null ? "warn" : "";
  }

  // Agents and their claims

  function renderAgents(agents: AgentView[], version: number): void {
    const ring = byId<SVGSVGElement>("ring");
    ring.replaceChildren();
    const r = 62;
    const c = 2 * Math.PI * r;
    ring.appendChild(
      svg("circle", { cx: 80, cy: 80, r, fill: "none", class: "ring-track", "stroke-width": 22 }),
    );
    let offset = 0;
    const gap = agents.length > 1 ? 2 : 0;
    for (const agent of agents) {
      const length = agent.claim * c;
      const dash = Math.max(0, length - gap);
      const arc = svg("circle", {
        cx: 80,
        cy: 80,
        r,
        fill: "none",
        stroke: agentStyle(agent.id).color,
        "stroke-width": 22,
        "stroke-dasharray": `${dash} ${c - dash}`,
        "stroke-dashoffset": String(-offset),
        transform: "rotate(-90 80 80)",
        "data-agent": agent.id,
      });
      const title = svg("title");
      title.textContent = `${agent.id} claims ${(100 * agent.claim).toFixed(1)}% of flows`;
      arc.appendChild(title);
      ring.appendChild(arc);
      offset += length;
    }
    const count = svg("text", { x: 80, y: 80, "text-anchor": "middle", class: "ring-total" });
    count.textContent = String(agents.length);
    const caption = svg("text", { x: 80, y: 98, "text-anchor": "middle", class: "ring-caption" });
    caption.textContent = agents.length === 1 ? "agent" : "agents";
    ring.appendChild(count);
    ring.appendChild(caption);

    const list = byId("agents");
    list.replaceChildren();
    if (agents.length === 0) list.appendChild(h("li", { class: "empty", text: "No agent is connected." }));
    for (const agent of agents) {
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = agentStyle(agent.id).color;
      const current = agent.state_version === version
        ? "state current"
        : `state v${agent.state_version} (behind)`;
      const { served, handed_off, open } = agent.connections;
      list.appendChild(h("li", { "data-agent": agent.id }, [
        swatch,
        h("span", { class: "id mono", text: agent.id }),
        h("span", { class: "claim", text: `${(100 * agent.claim).toFixed(1)}%` }),
        h("span", {
          class: "sub",
          text: `${served} served · ${handed_off} handed off · ${open} open · heartbeat ${
            ago(agent.last_heartbeat_s)
          } · ${current}`,
        }),
      ]));
    }
    setText(byId("sum-agents"), String(agents.length));
  }

  function agentStyle(id: string): { color: string; dash: string } {
    let index = agentColors.get(id);
    if (index === undefined) agentColors.set(id, index = agentColors.size);
    return seriesStyle(index);
  }

  // The last minutes, as charts: the manager samples every few seconds (GET /v1/history).

  /** A chart's figure, empty until drawn: its SVG, and the figure with its caption. */
  function chartFigure(kind: string, caption: string): [SVGSVGElement, HTMLElement] {
    const plot = svg("svg", { class: "plot", role: "img", "aria-label": caption });
    return [
      plot,
      h("figure", { class: "chart", "data-chart": kind }, [h("figcaption", { text: caption }), plot]),
    ];
  }

  /**
   * Draws `lines` over `times` into `plot`, as wide as the page shows it: a grid line and label per value
   * tick, time labels, a path per line (`data-series`, and `data-points`: how many samples it goes through)
   * with a dot on its newest value, and a word in the middle when there is nothing to draw.
   */
  function drawChart(plot: SVGSVGElement, times: readonly number[], lines: readonly Line[], windowS: number) {
    const width = Math.max(160, Math.round(plot.getBoundingClientRect().width) || 320);
    const layout = chartLayout(times, lines, { width, height: CHART_HEIGHT, margin: CHART_MARGIN, windowS });
    const { left, right, top, bottom } = layout.plot;
    const label = (x: number, y: number, text: string, anchor: string, kind = "tick") => {
      const node = svg("text", { class: kind, x, y, "text-anchor": anchor });
      node.textContent = text;
      return node;
    };
    const nodes: SVGElement[] = [];
    for (const tick of layout.yTicks) {
      nodes.push(svg("line", { class: "grid", x1: left, x2: right, y1: tick.at, y2: tick.at }));
      nodes.push(label(left - 6, tick.at + 3.5, tick.label, tick.anchor));
    }
    for (const tick of layout.xTicks) nodes.push(label(tick.at, CHART_HEIGHT - 6, tick.label, tick.anchor));
    if (layout.empty) {
      const words = times.length === 0 ? "No samples yet" : "No values yet";
      nodes.push(label((left + right) / 2, (top + bottom) / 2, words, "middle", "chart-empty"));
    }
    layout.lines.forEach((line, i) => {
      const { color, dash } = lines[i]!;
      const path = svg("path", {
        class: "line",
        d: line.d,
        stroke: color,
        "data-series": line.name,
        "data-points": line.points,
      });
      if (dash !== "") path.setAttribute("stroke-dasharray", dash);
      const title = svg("title");
      title.textContent = `${line.name}: ${line.last === null ? "no value" : number(line.last)}`;
      path.appendChild(title);
      nodes.push(path);
      if (line.end !== null) {
        nodes.push(svg("circle", { class: "end", cx: line.end[0], cy: line.end[1], r: 2.5, fill: color }));
      }
    });
    plot.setAttribute("viewBox", `0 0 ${width} ${CHART_HEIGHT}`);
    plot.replaceChildren(...nodes);
  }

  /** The legend of a card's charts: a sample of each line, and its name. Rebuilt only when they change. */
  function drawLegend(legend: HTMLElement, lines: readonly Line[]): void {
    const key = JSON.stringify(lines.map(({ name, color, dash }) => [name, color, dash]));
    if (legend.dataset.key === key) return;
    legend.dataset.key = key;
    legend.replaceChildren(...lines.map(({ name, color, dash }) => {
      const sample = svg("svg", { width: 22, height: 10, "aria-hidden": "true" });
      const stroke = svg("line", { x1: 2, y1: 5, x2: 20, y2: 5, stroke: color, "stroke-width": 2.5 });
      if (dash !== "") stroke.setAttribute("stroke-dasharray", dash);
      sample.appendChild(stroke);
      const item = h("li", { "data-series": name }, [h("span", { class: "mono", text: name })]);
      item.prepend(sample);
      return item;
    }));
  }

  function renderHistory(view: HistoryView): void {
    // Every chart's time axis reaches as far back: over the samples there are, up to the window kept.
    const { times } = view;
    const spanS = axisSpan(times.length > 0 ? (times.at(-1)! - times[0]!) / 1000 : 0, view.window_s);
    const every = formatDuration(view.interval_s);
    const windowText = `last ${formatDuration(spanS)}, a sample every ${every}`;
    for (const [name, card] of cards) {
      const backends = view.services.find((service) => service.name === name)?.backends ?? [];
      const lines = (values: (backend: typeof backends[number]) => Points): Line[] =>
        backends.map((backend, i) => ({ name: backend.address, values: values(backend), ...seriesStyle(i) }));
      const { history } = card;
      setText(history.window, windowText);
      drawChart(history.connections, times, lines((b) => b.connections_per_s), spanS);
      drawChart(history.open, times, lines((b) => b.open_connections), spanS);
      drawChart(history.weight, times, lines((b) => b.effective_weight), spanS);
      drawLegend(history.legend, lines(() => []));
    }
    const lines = (values: (agent: typeof view.agents[number]) => Points): Line[] =>
      view.agents.map((agent) => ({ name: agent.id, values: values(agent), ...agentStyle(agent.id) }));
    setText(byId("agent-history-window"), windowText);
    drawChart(byId("agent-decisions"), times, lines((a) => a.decisions_per_s), spanS);
    drawChart(byId("agent-handoffs"), times, lines((a) => a.handoffs_per_s), spanS);
    drawLegend(byId("agent-legend"), lines(() => []));
  }

  // Events

  function renderEvents(data: EventsView): void {
    const list = byId("events");
    if (data.last < lastEvent) {
      list.replaceChildren();
      lastEvent = 0;
    }
    for (const event of data.events) {
      if (event.seq <= lastEvent) continue;
      lastEvent = event.seq;
      list.querySelector(".empty")?.remove();
      const kind = `kind ${event.kind}${event.severity === "warning" ? " warning" : ""}`;
      list.insertBefore(
        h("li", { "data-kind": event.kind }, [
          h("time", { text: clock(new Date(event.at)) }),
          h("span", { class: kind, text: event.kind }),
          h("span", { text: event.message }),
        ]),
        list.firstChild,
      );
    }
    while (list.children.length > MAX_EVENTS) list.lastElementChild?.remove();
    if (list.children.length === 0) list.appendChild(h("li", { class: "empty", text: "No events yet." }));
  }

  byId("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const entered = byId<HTMLInputElement>("token").value.trim();
    if (entered === "") return;
    token = entered;
    try {
      await api("/v1/services");
    } catch (error) {
      token = null;
      showLogin(
        error instanceof AuthError
          ? "The manager refused that token."
          : `Cannot reach the manager: ${messageOf(error)}`,
      );
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  byId("forget").addEventListener("click", () => forget("Enter the admin token to see the cluster."));

  if (token) start();
  else showLogin("");
}
