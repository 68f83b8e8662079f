// The RAFAEL dashboard: one page over the admin API (DESIGN §5, §9). No framework and no build
// step: views are functions that build DOM nodes from API answers (text only, never HTML from
// data), a hash router picks the view, and one server-sent event stream (/v1/events, read with
// fetch so the token can travel in a header) keeps the figures live.

const TOKEN_KEY = "rafael-token";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  routes: {}, // name -> live figures, from the `routes` events
  version: 0,
  listeners: new Set(), // callbacks of the open view for each event
};

// === DOM helpers ===

/** An element with attributes (`on*` are listeners) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(
    ["svg", "path", "line", "rect", "text", "g", "polyline"].includes(tag)
      ? "http://www.w3.org/2000/svg"
      : "http://www.w3.org/1999/xhtml",
    tag,
  );
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const view = () => document.getElementById("view");

function show(...nodes) {
  view().replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
}

function pill(text, cls = text) {
  return el("span", { class: `pill ${cls}` }, text);
}

const fmt = {
  pct: (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`),
  ms: (v) => (v === null || v === undefined ? "–" : `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`),
  num: (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits)),
  value: (v) => (v === null || v === undefined ? "none" : typeof v === "object" ? JSON.stringify(v) : String(v)),
  time: (iso) => {
    if (!iso) return "–";
    const at = new Date(iso);
    return at.toDateString() === new Date().toDateString() ? at.toLocaleTimeString() : at.toLocaleString();
  },
};

/** A figure with its label, as the route and experiment pages show them. */
function card(label, value, testid) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value", "data-testid": testid }, value));
}

/** A table of `headers` (strings, or `{label, num}` for a right-aligned column) over `rows`
 * (row elements, or a `tbody` the caller keeps to re-render in place). */
function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null }, h.label ?? h)))),
    rows instanceof Node ? rows : el("tbody", {}, rows),
  );
}

function errorBox(error) {
  return el("p", { class: "error", role: "alert", "data-testid": "error" }, String(error.message ?? error));
}

// === the API ===

class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail ? `${status}: ${body.detail}` : `the admin API answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

/** Calls the admin API; on 401 asks for a token once and tries again. */
async function api(path, { method = "GET", body } = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = { detail: text };
    }
    if (response.status === 401 && attempt === 0) {
      await login(state.token ? "That token was refused; give another." : null);
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, json);
    return json;
  }
}

let pendingLogin = null;

/** Asks for the token (once for every caller waiting) and keeps it for this tab. */
function login(why) {
  if (pendingLogin) return pendingLogin;
  const dialog = document.getElementById("login");
  if (why) document.getElementById("login-why").textContent = why;
  pendingLogin = new Promise((resolve) => {
    const form = document.getElementById("login-form");
    const submitted = (event) => {
      event.preventDefault();
      state.token = document.getElementById("token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      document.getElementById("logout").hidden = false;
      form.removeEventListener("submit", submitted);
      dialog.close();
      pendingLogin = null;
      resolve();
      restartEvents();
    };
    form.addEventListener("submit", submitted);
    dialog.showModal();
  });
  return pendingLogin;
}

// === live events ===

let events = null;

function restartEvents() {
  events?.abort();
  events = new AbortController();
  streamEvents(events.signal);
}

/** Reads /v1/events (server-sent events) and dispatches each; reconnects after a failure. */
async function streamEvents(signal) {
  const live = document.getElementById("live");
  while (!signal.aborted) {
    try {
      const response = await fetch("/v1/events", { headers: headers(), signal });
      if (response.status === 401) {
        live.className = "live off";
        live.textContent = "signed out";
        await login(state.token ? "That token was refused; give another." : null);
        return;
      }
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      live.className = "live on";
      live.textContent = "live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    live.className = "live off";
    live.textContent = "reconnecting";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function dispatch(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (name === "routes") {
    state.routes = payload.routes;
    state.version = payload.version;
  } else if (name !== "hello") {
    note(name, payload);
  }
  for (const listener of state.listeners) listener(name, payload);
}

/** Adds an event to the activity feed. */
function note(name, payload) {
  const feed = document.getElementById("feed");
  const text =
    name === "breaker"
      ? `breaker ${payload.route} ${payload.endpoint}: ${payload.from} → ${payload.to}`
      : `${payload.action} ${payload.target} (${payload.actor})`;
  feed.prepend(el("li", { "data-event": name }, el("time", {}, new Date().toLocaleTimeString()), text));
  while (feed.children.length > 60) feed.lastChild.remove();
}

/** Runs `callback` on every event while the current view is open. */
function onEvent(callback) {
  state.listeners.add(callback);
}

// === charts ===

/** A line chart of `series` (arrays of [t, value]) as SVG, with its last value labelled. */
function lineChart(title, series, format) {
  const [w, h, left, bottom] = [600, 160, 44, 18];
  const all = series.flatMap((s) => s.points).filter(([, v]) => v !== null && v !== undefined);
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": title });
  svg.append(el("text", { x: left, y: 12 }, title));
  if (all.length < 2) {
    svg.append(el("text", { x: left, y: h / 2 }, "waiting for traffic…"));
    return svg;
  }
  const t0 = Math.min(...all.map(([t]) => t));
  const t1 = Math.max(...all.map(([t]) => t));
  const span = t1 - t0;
  const ago = span >= 120 ? `${Math.round(span / 60)} min ago` : `${Math.round(span)} s ago`;
  const top = Math.max(...all.map(([, v]) => v)) * 1.1 || 1;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (w - left - 6);
  const y = (v) => h - bottom - (v / top) * (h - bottom - 20);
  svg.append(el("line", { class: "axis", x1: left, x2: w - 6, y1: h - bottom, y2: h - bottom }));
  svg.append(el("text", { x: 2, y: y(top / 1.1) + 4 }, format(top / 1.1)));
  svg.append(el("text", { x: 2, y: h - bottom }, format(0)));
  svg.append(el("text", { x: left, y: h - 4 }, ago));
  svg.append(el("text", { x: w - 30, y: h - 4 }, "now"));
  series.forEach((s, i) => {
    const pts = s.points.filter(([, v]) => v !== null && v !== undefined);
    svg.append(
      el("polyline", {
        class: `line ${i ? "b" : ""}`,
        points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
      }),
    );
  });
  return svg;
}

/** Side-by-side bars, incumbent and candidate, for each scenario's value of one objective. */
function beforeAfter(title, predicted, pick, format) {
  const [w, h] = [600, 40 + predicted.length * 34];
  const svg = el("svg", { class: "chart bars", viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": title });
  svg.append(el("text", { x: 4, y: 14 }, `${title} (grey: now, blue: proposed)`));
  const top = Math.max(...predicted.flatMap((p) => [pick(p.incumbent), pick(p.candidate)]), 1e-9);
  predicted.forEach((p, i) => {
    const y0 = 26 + i * 34;
    svg.append(el("text", { x: 4, y: y0 + 14 }, p.scenario));
    [
      ["incumbent", pick(p.incumbent)],
      ["candidate", pick(p.candidate)],
    ].forEach(([cls, v], j) => {
      const width = (v / top) * (w - 260);
      svg.append(el("rect", { class: cls, x: 150, y: y0 + j * 13, width: Math.max(1, width), height: 11 }));
      svg.append(el("text", { x: 155 + width, y: y0 + j * 13 + 10 }, format(v)));
    });
  });
  return svg;
}

// === views ===

function liveCells(name, figures) {
  const f = figures ?? {};
  const breakers = (f.endpoints ?? []).map((e) =>
    e.breaker ? pill(`${e.address} ${e.breaker}`, e.breaker) : el("span", { class: "muted" }, `${e.address} `),
  );
  return [
    el("td", { class: "num", "data-testid": `rate-${name}` }, fmt.num(f.rate)),
    el("td", { class: "num", "data-testid": `success-${name}` }, fmt.pct(f.success)),
    el("td", { class: "num", "data-testid": `p99-${name}` }, fmt.ms(f.p99_ms)),
    el("td", { class: "num" }, f.in_flight ?? "–"),
    el("td", {}, breakers),
    el("td", { class: "num", "data-testid": `generation-${name}` }, f.generation ?? "–", f.canary ? pill("canary") : null),
  ];
}

async function routesView(ctx) {
  const { routes } = await api("/v1/routes");
  const body = el("tbody", { "data-testid": "routes" });
  const render = () => {
    body.replaceChildren(
      ...routes.map((route) =>
        el(
          "tr",
          { class: "link", "data-testid": `route-${route.name}`, onclick: () => (location.hash = `#/routes/${encodeURIComponent(route.name)}`) },
          el("td", {}, el("a", { href: `#/routes/${encodeURIComponent(route.name)}` }, route.name)),
          el("td", {}, route.upstream),
          liveCells(route.name, state.routes[route.name] ?? route.live),
        ),
      ),
    );
  };
  render();
  ctx.on((name) => name === "routes" && render());
  const heads = ["Route", "Upstream", { label: "req/s", num: true }, { label: "Success", num: true }, { label: "p99", num: true }, { label: "In flight", num: true }, "Endpoints (breaker)", { label: "Generation", num: true }];
  ctx.show(
    el("h1", {}, "Routes"),
    el("p", { class: "muted" }, "Figures over the last 10 seconds, updated every second."),
    table(heads, body),
  );
}

async function routeView(ctx, name) {
  const path = encodeURIComponent(name);
  const [routes, lineage, proposals] = await Promise.all([
    api("/v1/routes"),
    api(`/v1/routes/${path}/genomes`),
    api(`/v1/proposals?route=${path}&limit=20`),
  ]);
  const route = routes.routes.find((r) => r.name === name);
  if (!route) throw new Error(`no route named ${name}`);
  const cards = el("div", { class: "cards", "data-testid": "route-cards" });
  const charts = el("div", { class: "charts" });
  const renderCards = () => {
    const f = state.routes[name] ?? route.live;
    cards.replaceChildren(
      card("Requests / s", fmt.num(f.rate), "route-rate"),
      card("Success", fmt.pct(f.success), "route-success"),
      card("p99", fmt.ms(f.p99_ms), "route-p99"),
      card("In flight", f.in_flight, "route-in-flight"),
      card("Attempts / request", fmt.num(f.amplification, 2), "route-amplification"),
      card("Generation", f.generation, "route-generation"),
    );
  };
  let fetched = 0;
  const renderCharts = async () => {
    if (Date.now() - fetched < 2000) return;
    fetched = Date.now();
    const { points: all } = await api(`/v1/routes/${path}/series?secs=300`);
    // From the first second with traffic: a route that started a minute ago has no five minutes.
    const first = all.findIndex((p) => p.requests > 0);
    const points = first < 0 ? [] : all.slice(first);
    charts.replaceChildren(
      lineChart("Requests per second", [{ points: points.map((p) => [p.t, p.requests]) }], (v) => fmt.num(v, 0)),
      lineChart("p99 latency", [{ points: points.map((p) => [p.t, p.p99_ms]) }], fmt.ms),
    );
  };
  renderCards();
  renderCharts();
  ctx.on((event) => {
    if (event === "routes") {
      renderCards();
      renderCharts();
    }
  });
  const modelBox = el("div", {}, el("p", { class: "muted" }, "Fitting the model…"));
  api(`/v1/routes/${path}/model`)
    .then((model) => modelBox.replaceChildren(modelPanel(model)))
    .catch((error) => modelBox.replaceChildren(el("p", { class: "muted" }, `No model yet: ${error.message}`)));
  ctx.show(
    el("h1", {}, `Route ${name}`, " ", el("span", { class: "muted" }, `→ ${route.upstream}`)),
    cards,
    charts,
    el("h2", {}, "Live genome"),
    el("pre", { "data-testid": "genome" }, JSON.stringify(route.genome, null, 2)),
    el("h2", {}, "Lineage"),
    lineagePanel(name, lineage),
    el("h2", {}, "Proposals"),
    proposalsTable(proposals.proposals),
    el("h2", {}, "Model of the upstream"),
    modelBox,
  );
}

function lineagePanel(route, lineage) {
  const rows = lineage.genomes.map((g) =>
    el(
      "tr",
      {},
      el("td", { class: "num" }, g.generation, g.generation === lineage.generation ? pill("live", "ok") : null),
      el("td", {}, g.source, g.restores ? ` (restores ${g.restores})` : ""),
      el("td", {}, fmt.time(g.applied_at)),
      el("td", {}, g.actor),
      el("td", {}, g.proposal_id ? el("a", { href: `#/proposals/${g.proposal_id}` }, `#${g.proposal_id}`) : "–"),
      el("td", {}, g.reason ?? ""),
      el(
        "td",
        {},
        g.generation === lineage.generation
          ? ""
          : el("button", { class: "quiet", onclick: () => rollback(route, g.generation) }, "Restore"),
      ),
    ),
  );
  return table(["Gen", "Source", "Applied", "By", "Proposal", "Why", ""], rows, { "data-testid": "lineage" });
}

async function rollback(route, generation) {
  const comment = prompt(`Restore generation ${generation} of ${route}? Why (for the audit log):`);
  if (comment === null) return;
  try {
    await api(`/v1/routes/${encodeURIComponent(route)}/rollback`, { method: "POST", body: { to: generation, comment } });
    render();
  } catch (error) {
    view().prepend(errorBox(error));
  }
}

function modelPanel(model) {
  const f = model.fidelity;
  const endpoints = model.endpoints.map((e) =>
    el(
      "tr",
      {},
      el("td", {}, e.endpoint),
      el("td", { class: "num" }, fmt.ms(e.service_time.p50_ms)),
      el("td", { class: "num" }, fmt.ms(e.service_time.p99_ms)),
      el("td", { class: "num" }, e.capacity ? fmt.num(e.capacity.concurrency) : "not seen"),
      el("td", { class: "num" }, fmt.pct(e.failure.rate)),
      el("td", { class: "num" }, fmt.pct(e.timeout_rate)),
    ),
  );
  const checks = f
    ? ["goodput", "p50_ms", "p99_ms", "amplification"].map((k) =>
        el("tr", {}, el("td", {}, k), el("td", { class: "num" }, fmt.num(f[k].observed, 3)), el("td", { class: "num" }, fmt.num(f[k].simulated, 3)), el("td", { class: "num" }, fmt.num(f[k].error, 3))),
      )
    : [];
  return el(
    "div",
    { "data-testid": "model" },
    el("p", {}, `Fitted ${fmt.time(model.fitted_at)} on ${model.window_secs} s and ${model.requests} requests, ${fmt.num(model.arrivals.rate_per_sec)} req/s. `, f ? pill(f.trusted ? "trusted" : "not trusted", f.trusted ? "ok" : "bad") : null, f?.reason ? ` ${f.reason}` : ""),
    table(["Endpoint", { label: "Service p50", num: true }, { label: "p99", num: true }, { label: "Capacity", num: true }, { label: "Failures", num: true }, { label: "Timeouts", num: true }], endpoints),
    el("h2", {}, "Fidelity (the live genome replayed on the model)"),
    table(["Figure", { label: "Observed", num: true }, { label: "Simulated", num: true }, { label: "Error", num: true }], checks, { "data-testid": "fidelity" }),
    model.regimes.length ? el("p", {}, "Bad periods: ", model.regimes.map((r) => pill(`${r.kind} ${fmt.pct(r.share)} of the time`, "half_open"))) : null,
  );
}

function proposalsTable(proposals) {
  const rows = proposals.map((p) =>
    el(
      "tr",
      { class: "link", "data-testid": `proposal-${p.id}`, onclick: () => (location.hash = `#/proposals/${p.id}`) },
      el("td", {}, el("a", { href: `#/proposals/${p.id}` }, `#${p.id}`)),
      el("td", {}, p.route),
      el("td", {}, pill(p.state)),
      el("td", {}, p.source),
      el("td", {}, fmt.time(p.created_at)),
      el("td", {}, p.diff.map((d) => d.gene).join(", ")),
    ),
  );
  return table(["Id", "Route", "State", "Source", "Created", "Changes"], rows, { "data-testid": "proposals" });
}

async function proposalsView(ctx) {
  const filter = new URLSearchParams(location.hash.split("?")[1] ?? "").get("state") ?? "";
  const { proposals } = await api(`/v1/proposals${filter ? `?state=${filter}` : ""}`);
  const states = ["", "pending", "approved", "canary", "applied", "kept", "rolled_back", "rejected", "expired", "superseded"];
  ctx.show(
    el("h1", {}, "Proposals"),
    el(
      "p",
      {},
      "State: ",
      el(
        "select",
        { onchange: (e) => (location.hash = `#/proposals?state=${e.target.value}`) },
        states.map((s) => el("option", { value: s, selected: s === filter }, s || "any")),
      ),
    ),
    proposalsTable(proposals),
  );
  ctx.on((name) => name === "proposal" && render());
}

async function proposalView(ctx, id) {
  const p = await api(`/v1/proposals/${id}`);
  const decide = (decision) => async () => {
    const comment = document.getElementById("comment").value;
    try {
      await api(`/v1/proposals/${id}/${decision}`, { method: "POST", body: comment ? { comment } : {} });
      render();
    } catch (error) {
      view().prepend(errorBox(error));
    }
  };
  const waiting = p.state === "pending" || (p.state === "canary" && ["inconclusive", "interrupted"].includes(p.canary?.state));
  const diff = p.diff.map((d) => el("tr", {}, el("td", {}, d.gene), el("td", {}, fmt.value(d.from)), el("td", {}, fmt.value(d.to))));
  const predicted = p.predicted.map((s) =>
    el(
      "tr",
      {},
      el("td", {}, s.scenario, s.extrapolated ? pill("extrapolated", "half_open") : null),
      el("td", { class: "num" }, fmt.pct(s.incumbent.goodput)),
      el("td", { class: "num" }, fmt.pct(s.candidate.goodput)),
      el("td", { class: "num" }, fmt.num(s.incumbent.amplification, 2)),
      el("td", { class: "num" }, fmt.num(s.candidate.amplification, 2)),
      el("td", { class: "num" }, fmt.num(s.incumbent.fitness, 3)),
      el("td", { class: "num" }, fmt.num(s.candidate.fitness, 3)),
    ),
  );
  const approvals = p.approvals.map((a) => el("li", {}, `${a.decision} by ${a.by} at ${fmt.time(a.at)}`, a.comment ? `: “${a.comment}”` : ""));
  ctx.show(
    el("h1", {}, `Proposal #${p.id} for `, el("a", { href: `#/routes/${encodeURIComponent(p.route)}` }, p.route), " ", el("span", { "data-testid": "proposal-state" }, pill(p.state))),
    el("p", { class: "muted" }, `${p.source} by ${p.author}, ${fmt.time(p.created_at)}; expires ${fmt.time(p.expires_at)}; base generation ${p.base_generation}.`),
    el("h2", {}, "What changes"),
    table(["Gene", "Now", "Proposed"], diff, { class: "diff", "data-testid": "diff" }),
    el("h2", {}, "Predicted impact"),
    p.predicted.length ? beforeAfter("Goodput", p.predicted, (o) => o.goodput, fmt.pct) : el("p", { class: "muted" }, "No simulation evidence."),
    table(["Scenario", { label: "Goodput now", num: true }, { label: "proposed", num: true }, { label: "Attempts/req now", num: true }, { label: "proposed", num: true }, { label: "Fitness now", num: true }, { label: "proposed", num: true }], predicted, { "data-testid": "predicted" }),
    el("p", {}, "Model: ", p.model.trusted ? pill("trusted", "ok") : pill("not trusted", "bad"), ` fitted ${fmt.time(p.model.fitted_at)}. Guardrails: `, typeof p.guardrails === "string" ? pill(p.guardrails, "ok") : pill("refused", "bad")),
    p.canary ? el("div", {}, el("h2", {}, "Canary"), el("pre", { "data-testid": "canary" }, JSON.stringify(p.canary, null, 2))) : null,
    p.watch ? el("div", {}, el("h2", {}, "Watch"), el("pre", { "data-testid": "watch" }, JSON.stringify(p.watch, null, 2))) : null,
    el("h2", {}, "Decisions"),
    approvals.length ? el("ul", {}, approvals) : el("p", { class: "muted" }, "None yet."),
    waiting
      ? el(
          "form",
          { class: "inline", onsubmit: (e) => e.preventDefault() },
          el("label", {}, "Comment", el("input", { id: "comment", size: 50, "data-testid": "comment" })),
          el("button", { type: "button", onclick: decide("approve"), "data-testid": "approve" }, p.state === "canary" ? "Promote" : "Approve"),
          el("button", { type: "button", class: "danger", onclick: decide("reject"), "data-testid": "reject" }, "Reject"),
        )
      : null,
  );
  ctx.on((name, payload) => name !== "routes" && name !== "breaker" && payload.target === `proposal/${id}` && render());
}

async function experimentsView(ctx) {
  const [{ threats }, { experiments }, { routes }] = await Promise.all([api("/v1/threats"), api("/v1/experiments"), api("/v1/routes")]);
  const chosen = { threat: "latency", severity: "medium" };
  const severities = ["low", "medium", "high", "critical"];
  const byThreat = Object.groupBy ? Object.groupBy(threats, (t) => t.threat) : threats.reduce((m, t) => ((m[t.threat] ??= []).push(t), m), {});
  const cells = [];
  const grid = table(
    ["Threat", ...severities],
    Object.entries(byThreat).map(([threat, rows]) =>
      el(
        "tr",
        {},
        el("th", {}, threat),
        severities.map((severity) => {
          const row = rows.find((r) => r.severity === severity);
          const cell = el(
            "td",
            { title: row.injects, "data-testid": `threat-${threat}-${severity}` },
            el("button", { class: "quiet", type: "button", onclick: () => pick(threat, severity, cell) }, severity),
            el("div", { class: "muted" }, row.injects),
          );
          cells.push(cell);
          return cell;
        }),
      ),
    ),
    { class: "threats" },
  );
  const summary = el("strong", { "data-testid": "chosen" }, `${chosen.threat}:${chosen.severity}`);
  const pick = (threat, severity, cell) => {
    Object.assign(chosen, { threat, severity });
    cells.forEach((c) => c.classList.toggle("selected", c === cell));
    summary.textContent = `${threat}:${severity}`;
  };
  const message = el("div");
  const start = async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    try {
      const experiment = await api("/v1/experiments", {
        method: "POST",
        body: { route: form.get("route"), threat: chosen.threat, severity: chosen.severity, duration: form.get("duration") },
      });
      location.hash = `#/experiments/${experiment.id}`;
    } catch (error) {
      message.replaceChildren(errorBox(error));
    }
  };
  const rows = experiments.map((x) =>
    el(
      "tr",
      { class: "link", "data-testid": `experiment-${x.id}`, onclick: () => (location.hash = `#/experiments/${x.id}`) },
      el("td", {}, `#${x.id}`),
      el("td", {}, x.route),
      el("td", {}, pill(x.state)),
      el("td", {}, fmt.time(x.started_at)),
      el("td", {}, fmt.time(x.ends_at)),
    ),
  );
  ctx.show(
    el("h1", {}, "Experiments (Chaos Forge)"),
    el("p", { class: "muted" }, "Pick a threat and a severity, then start it on a route: the faults go live on that route's real traffic until the duration ends or you stop it."),
    grid,
    el(
      "form",
      { class: "inline panel", onsubmit: start, "data-testid": "start-form" },
      el("span", {}, "Threat ", summary),
      el("label", {}, "Route", el("select", { name: "route", "data-testid": "experiment-route" }, routes.map((r) => el("option", { value: r.name }, r.name)))),
      el("label", {}, "Duration", el("input", { name: "duration", value: "60s", size: 6, "data-testid": "experiment-duration" })),
      el("button", { type: "submit", "data-testid": "start-experiment" }, "Start"),
    ),
    message,
    el("h2", {}, "Experiments"),
    table(["Id", "Route", "State", "Started", "Ends"], rows),
  );
  ctx.on((name) => name === "experiment" && render());
}

async function experimentView(ctx, id) {
  const x = await api(`/v1/experiments/${id}`);
  const running = x.state === "running" || x.state === "pending";
  let report = null;
  if (!running) {
    // The report follows the end by the few seconds of recovery it measures.
    report = await api(`/v1/experiments/${id}/report`).catch(() => null);
    if (!report) ctx.again(1500);
  }
  const stop = async () => {
    try {
      await api(`/v1/experiments/${id}/stop`, { method: "POST", body: {} });
      render();
    } catch (error) {
      view().prepend(errorBox(error));
    }
  };
  const cards = el("div", { class: "cards" });
  const renderCards = () => {
    const f = state.routes[x.route];
    if (!f) return;
    cards.replaceChildren(card("Requests / s", fmt.num(f.rate)), card("Success", fmt.pct(f.success)), card("p99", fmt.ms(f.p99_ms)));
  };
  renderCards();
  const period = (name, p) =>
    p
      ? el("tr", {}, el("td", {}, name), el("td", { class: "num" }, p.requests), el("td", { class: "num" }, fmt.pct(p.error_rate)), el("td", { class: "num" }, fmt.ms(p.p50_ms)), el("td", { class: "num" }, fmt.ms(p.p99_ms)), el("td", { class: "num" }, fmt.num(p.attempts_per_request, 2)))
      : null;
  ctx.show(
    el("h1", {}, `Experiment #${x.id} on `, el("a", { href: `#/routes/${encodeURIComponent(x.route)}` }, x.route), " ", el("span", { "data-testid": "experiment-state" }, pill(x.state))),
    el("p", { class: "muted" }, `Started ${fmt.time(x.started_at)}, ends ${fmt.time(x.ends_at)}.`, x.abort_reason ? ` Aborted: ${x.abort_reason}` : ""),
    running ? el("div", {}, cards, el("button", { class: "danger", onclick: stop, "data-testid": "stop-experiment" }, "Stop now")) : null,
    el("h2", {}, "Faults"),
    el("pre", {}, JSON.stringify(x.faults, null, 2)),
    !running && !report ? el("p", { class: "muted", "data-testid": "report-pending" }, "Watching the recovery; the report follows in a few seconds.") : null,
    report
      ? el(
          "div",
          { "data-testid": "report" },
          el("h2", {}, "Report"),
          el("p", {}, el("strong", {}, report.verdict)),
          table(["Period", { label: "Requests", num: true }, { label: "Errors", num: true }, { label: "p50", num: true }, { label: "p99", num: true }, { label: "Attempts/req", num: true }], [period("before", report.steady_state), period("during", report.during), period("after", report.after)]),
          el("ul", {}, report.recommendations.map((r) => el("li", {}, r))),
        )
      : null,
  );
  ctx.on((name, payload) => {
    if (name === "routes") renderCards();
    else if (name === "experiment" && payload.target?.endsWith(`/${id}`)) render();
  });
}

/** The audit view's last verification (`{ pending }`, `{ v }` or `{ error }`), kept outside the
 * view: any event renders the view again, and a verification that answers after that must show
 * in the new view, not in the one the operator clicked. Cleared when the operator navigates. */
let auditVerification = null;

function showVerification(node) {
  if (!node || !auditVerification) return;
  const { pending, v, error } = auditVerification;
  if (pending) node.textContent = "verifying…";
  else if (error) node.replaceChildren(errorBox(error));
  else node.replaceChildren(v.ok ? pill(`chain holds: ${v.entries} entries`, "ok") : pill(`broken at entry ${v.broken.id}: ${v.broken.reason}`, "bad"));
}

async function auditView(ctx) {
  const { entries } = await api("/v1/audit?limit=1000");
  const result = el("span", { "data-testid": "verify-result" });
  showVerification(result);
  const verify = async () => {
    const mine = (auditVerification = { pending: true });
    const shown = () => document.querySelector('[data-testid="verify-result"]');
    showVerification(shown());
    let outcome;
    try {
      outcome = { v: await api("/v1/audit/verify") };
    } catch (error) {
      outcome = { error };
    }
    // A newer click, or a navigation, has taken over.
    if (auditVerification !== mine) return;
    auditVerification = outcome;
    showVerification(shown());
  };
  const rows = entries
    .slice(-200)
    .reverse()
    .map((e) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, e.id),
        el("td", {}, fmt.time(e.at)),
        el("td", {}, e.actor),
        el("td", {}, e.action),
        el("td", {}, e.target),
        el("td", {}, el("code", {}, JSON.stringify(e.details).slice(0, 160))),
      ),
    );
  ctx.show(
    el("h1", {}, "Audit log"),
    el("p", {}, el("button", { onclick: verify, "data-testid": "verify" }, "Verify the hash chain"), " ", result),
    table(["Id", "At", "Actor", "Action", "Target", "Details"], rows, { "data-testid": "audit" }),
  );
  ctx.on((name) => !["routes", "breaker"].includes(name) && render());
}

async function vaultView(ctx) {
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const { patterns } = await api(`/v1/vault/patterns?${params}`);
  const search = (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const query = new URLSearchParams([...form].filter(([, v]) => v));
    location.hash = `#/vault?${query}`;
  };
  const categories = ["", "retry", "circuit-breaker", "rate-limit", "concurrency", "timeout", "protection", "composite"];
  const rows = patterns.map((p) =>
    el(
      "tr",
      { class: "link", "data-testid": `pattern-${p.name}`, onclick: () => (location.hash = `#/vault/${encodeURIComponent(p.name)}`) },
      el("td", {}, el("a", { href: `#/vault/${encodeURIComponent(p.name)}` }, p.name)),
      el("td", {}, p.category),
      el("td", {}, p.stacks.join(", ")),
      el("td", {}, p.source),
      el("td", {}, p.description.split(". ")[0]),
    ),
  );
  ctx.show(
    el("h1", {}, "Vault"),
    el(
      "form",
      { class: "inline panel", onsubmit: search },
      el("label", {}, "Words", el("input", { name: "q", value: params.get("q") ?? "", "data-testid": "vault-q" })),
      el("label", {}, "Category", el("select", { name: "category" }, categories.map((c) => el("option", { value: c, selected: c === (params.get("category") ?? "") }, c || "any")))),
      el("label", {}, "Stack", el("input", { name: "stack", value: params.get("stack") ?? "", size: 12 })),
      el("button", { type: "submit", "data-testid": "vault-search" }, "Search"),
    ),
    table(["Pattern", "Category", "Stacks", "Source", "When"], rows, { "data-testid": "patterns" }),
  );
}

async function patternView(ctx, name) {
  const p = await api(`/v1/vault/patterns/${encodeURIComponent(name)}`);
  ctx.show(
    el("h1", {}, p.name, " ", pill(p.source, p.source === "learned" ? "ok" : "muted")),
    el("p", {}, `${p.category}; stacks: ${p.stacks.join(", ")}; tags: ${p.tags.join(", ")}`),
    el("p", {}, p.description),
    el("h2", {}, "Genome"),
    el("pre", {}, JSON.stringify(p.genome, null, 2)),
    p.learned_from ? el("div", {}, el("h2", {}, "Learned from"), el("pre", {}, JSON.stringify(p.learned_from, null, 2))) : null,
  );
}

async function apiView(ctx) {
  const doc = await api("/v1/openapi.json");
  const rows = Object.entries(doc.paths).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, op]) =>
      el("tr", {}, el("td", {}, el("code", {}, method.toUpperCase())), el("td", {}, el("code", {}, path)), el("td", {}, op["x-rafael-permission"] ?? "open"), el("td", {}, op.summary ?? op.description ?? "")),
    ),
  );
  ctx.show(
    el("h1", {}, `${doc.info.title} ${doc.info.version}`),
    el("p", {}, "The whole document: ", el("a", { href: "/v1/openapi.json" }, "/v1/openapi.json"), "."),
    table(["Method", "Path", "Access", "What"], rows, { "data-testid": "openapi" }),
  );
}

// === the router ===

const routesTable = [
  [/^#\/routes\/(.+)$/, (ctx, m) => routeView(ctx, decodeURIComponent(m[1])), "routes"],
  [/^#\/proposals\/(\d+)$/, (ctx, m) => proposalView(ctx, m[1]), "proposals"],
  [/^#\/proposals/, (ctx) => proposalsView(ctx), "proposals"],
  [/^#\/experiments\/(\d+)$/, (ctx, m) => experimentView(ctx, m[1]), "experiments"],
  [/^#\/experiments/, (ctx) => experimentsView(ctx), "experiments"],
  [/^#\/audit/, (ctx) => auditView(ctx), "audit"],
  [/^#\/vault\/([^?]+)$/, (ctx, m) => patternView(ctx, decodeURIComponent(m[1])), "vault"],
  [/^#\/vault/, (ctx) => vaultView(ctx), "vault"],
  [/^#\/api/, (ctx) => apiView(ctx), "api"],
  [/^/, (ctx) => routesView(ctx), "routes"],
];

let rendering = 0;

/** Shows the view the hash names. A view that finishes after the operator moved on (its API
 * calls were slow) neither shows itself nor listens: its `ctx` is no longer current. */
async function render() {
  const mine = ++rendering;
  state.listeners.clear();
  const current = () => mine === rendering;
  const ctx = {
    show: (...nodes) => current() && show(...nodes),
    on: (callback) => current() && onEvent(callback),
    /** Renders again in `ms`, unless the operator has moved on by then. */
    again: (ms) => setTimeout(() => current() && render(), ms),
  };
  const hash = location.hash || "#/routes";
  for (const [pattern, viewOf, nav] of routesTable) {
    const match = hash.match(pattern);
    if (!match) continue;
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("current", a.dataset.nav === nav));
    try {
      await viewOf(ctx, match);
    } catch (error) {
      ctx.show(errorBox(error));
    }
    return;
  }
}

window.addEventListener("hashchange", () => {
  auditVerification = null;
  render();
});
document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  location.reload();
});
document.getElementById("logout").hidden = !state.token;
render();
restartEvents();
