// The situation room: the grid on a map without tiles (the network may be closed), the
// day's balances, losses, alarms and the disconnect queue. Everything comes from /api/
// and refreshes every REFRESH_MS. Leaflet and Chart.js are Debian's packages.
"use strict";

const REFRESH_MS = 10000;
// The grid's level vocabulary, from the API (headend/levels.py): read once, at start.
let LEVELS = { admin: [], chains: { electricity: [], gas: [] }, below: {} };
const state = { path: [], node: null, timer: null, lastOk: null };

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(1) + " %");
const share = (x) => (x === null || x === undefined ? "–" : (Number(x) * 100).toFixed(0) + " %");

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// People log in (DESIGN.md section 10): the session is an HttpOnly cookie; writes carry
// the session's CSRF token, which /api/me and /api/login hand to the page.
const session = { csrf: null, user: null };

async function api(path, opts = {}) {
  const headers = { Accept: "application/json" };
  const init = { method: opts.method || "GET", headers, credentials: "same-origin" };
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
    init.body = JSON.stringify(opts.body);
  }
  const r = await fetch(path, init);
  const body = await r.json();
  if (r.status === 401 && path !== "/api/login") {
    showLogin(body.error);
    throw new Error("not logged in");
  }
  if (!r.ok) throw new Error(`${path}: ${body.error || r.status}`);
  return body;
}

function showLogin(message) {
  clearInterval(state.timer);
  state.timer = null;
  session.csrf = session.user = null;
  document.body.dataset.ready = "";
  $("who").textContent = "";
  $("logout").hidden = true;
  $("login-error").textContent = message || "";
  $("login").hidden = false;
  $("login-name").focus();
}

async function start() {
  let me;
  try {
    me = await api("/api/me");
  } catch (err) {
    $("status").textContent = "not updated: " + err.message;
    return;
  }
  if (!me.user) {
    showLogin("");
    return;
  }
  session.csrf = me.csrf || null;
  session.user = me.user;
  $("login").hidden = true;
  $("who").textContent =
    `${me.user.name} · ${me.user.roles.join(", ")} · ${me.user.regions.join(", ").replace("*", "republic")}`;
  $("logout").hidden = false;
  LEVELS = await api("/api/levels");
  await refresh();
  if (!state.timer) state.timer = setInterval(refresh, REFRESH_MS);
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("/api/login", {
      method: "POST", body: { name: $("login-name").value, password: $("login-password").value } });
    $("login-password").value = "";
    await start();
  } catch (err) {
    $("login-error").textContent = err.message.replace("/api/login: ", "");
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("/api/logout", { method: "POST", body: {} }); } catch (err) { /* shown below */ }
  state.node = null;
  state.path = [];
  showLogin("logged out");
});

// -- figures ---------------------------------------------------------------------------

function mainCommodity(node) {
  if (node.commodity && node.commodity !== "any") return node.commodity;
  return node.today && node.today.electricity ? "electricity" : "gas";
}

function figures(node) {
  const t = node.today || {};
  return t[mainCommodity(node)] || {};
}

function lossClass(f) {
  if (f.loss_pct === null || f.loss_pct === undefined) return "cn";
  if (f.completeness !== null && f.completeness < 0.5) return "cn";
  if (f.loss_pct < 4) return "c0";
  if (f.loss_pct < 8) return "c1";
  if (f.loss_pct < 15) return "c2";
  return "c3";
}
const COLOURS = { c0: "#2ea043", c1: "#d29922", c2: "#f0883e", c3: "#f85149", cn: "#6e7681" };

// -- the map ---------------------------------------------------------------------------

const map = L.map("map", { zoomSnap: 0.25, attributionControl: false, preferCanvas: true });
map.setView([41.3, 64.5], 5.5);
const graticule = L.layerGroup().addTo(map);
for (let lat = 36; lat <= 46; lat += 2) {
  L.polyline([[lat, 55], [lat, 74]], { color: "#1c3a52", weight: 1, interactive: false }).addTo(graticule);
}
for (let lon = 56; lon <= 74; lon += 2) {
  L.polyline([[36, lon], [46, lon]], { color: "#1c3a52", weight: 1, interactive: false }).addTo(graticule);
}
// The country's outline and its neighbours' (the Digital Chart of the World as GMT ships
// it, Debian's gmt-dcw; written by the Makefile, nothing fetched from the web), under
// everything else. DCW has no regions of Uzbekistan: their borders are not drawn.
map.createPane("outline").style.zIndex = 350;
const outline = L.layerGroup().addTo(map);
fetch("/static/outline.json")
  .then((r) => (r.ok ? r.json() : null))
  .then((d) => {
    if (!d) return;
    const renderer = L.canvas({ pane: "outline" });
    for (const c of d.countries) {
      const home = c.code === "UZ";
      L.polygon(c.rings, {
        pane: "outline", renderer, interactive: false,
        color: home ? "#3d7ea6" : "#24465e", weight: home ? 1.5 : 1,
        fill: home, fillColor: "#0f2a3d", fillOpacity: 0.35,
      }).addTo(outline);
    }
    document.getElementById("map").dataset.outline = d.countries.length;
  })
  .catch(() => {});
const links = L.layerGroup().addTo(map);
const marks = L.layerGroup().addTo(map);
// Outages in the last day (open ones in red), drawn over the grid.
const outageMarks = L.layerGroup().addTo(map);
// Open work orders: a square at the meter, by priority; red when overdue.
const orderMarks = L.layerGroup().addTo(map);
const PRIORITY_COLOURS = { 1: "#f85149", 2: "#f0883e", 3: "#58a6ff" };

function drawOrders(orders, nowS) {
  orderMarks.clearLayers();
  let n = 0;
  for (const o of orders) {
    if (o.lat === null || o.lon === null) continue;
    const late = o.due_at < nowS;
    L.rectangle([[o.lat - 0.004, o.lon - 0.005], [o.lat + 0.004, o.lon + 0.005]], {
      color: late ? "#ff4d4d" : PRIORITY_COLOURS[o.priority] || "#8b949e", weight: late ? 2 : 1,
      fillOpacity: 0.6, fillColor: PRIORITY_COLOURS[o.priority] || "#8b949e",
    }).bindTooltip(`work order ${o.order_id}: ${o.cause.replace("_", " ")} at ${o.serial}, ` +
      `${o.state}${late ? ", overdue" : ""} (${o.centre_id || "no centre"})`).addTo(orderMarks);
    n++;
  }
  document.getElementById("map").dataset.orders = n;
}

function drawOutages(outages) {
  outageMarks.clearLayers();
  for (const o of outages) {
    if (o.lat === null || o.lon === null) continue;
    L.circleMarker([o.lat, o.lon], {
      radius: 9 + Math.min(12, Math.sqrt(o.consumers)), color: o.ongoing ? "#ff4d4d" : "#d9a441",
      weight: 2, fill: false, dashArray: o.ongoing ? null : "4 3",
    }).bindTooltip(`${o.level} ${o.name || o.node_id}: ${o.ongoing ? "out" : "was out"} ` +
      `${o.minutes} min, ${o.consumers} consumers, ${o.restored}/${o.reported} back`)
      .addTo(outageMarks);
  }
}

function radius(node, maxLoad) {
  const load = (node.load || {})[mainCommodity(node)] || 0;
  if (!maxLoad || !load) return 5;
  return 5 + 20 * Math.sqrt(load / maxLoad);
}

function drawMap(parent, children) {
  links.clearLayers();
  marks.clearLayers();
  const placed = children.filter((c) => c.lat || c.lon);
  // Sizes compare nodes of one level (the generation link would dwarf the regions).
  const maxLoad = {};
  for (const c of placed) {
    const load = (c.load || {})[mainCommodity(c)] || 0;
    maxLoad[c.level] = Math.max(maxLoad[c.level] || 0, load);
  }
  const bounds = [];
  for (const c of placed) {
    if (parent && (parent.lat || parent.lon) && parent.level !== "republic") {
      L.polyline([[parent.lat, parent.lon], [c.lat, c.lon]],
        { color: "#3b5b78", weight: 1.5, interactive: false }).addTo(links);
    }
    const f = figures(c);
    const m = L.circleMarker([c.lat, c.lon], {
      radius: radius(c, maxLoad[c.level]), color: "#0b2233", weight: 1,
      fillColor: COLOURS[lossClass(f)], fillOpacity: 0.85,
    }).addTo(marks);
    m.bindTooltip(
      `<b>${esc(c.name)}</b> (${esc(c.level)})<br>in ${fmt(f.input)} · out ${fmt(f.output)}` +
      ` · loss ${pct(f.loss_pct)}<br>completeness ${share(f.completeness)}` +
      ` · consumers ${c.consumers} · online ${c.online}/${c.meters}`);
    if (["region", "republic"].includes(c.level)) {
      m.bindTooltip(esc(c.name), { permanent: true, direction: "right", className: "label",
        offset: [8, 0] });
    }
    if (c.children || c.meters) m.on("click", () => openNode(c.node_id));
    bounds.push([c.lat, c.lon]);
  }
  document.body.dataset.marks = String(marks.getLayers().length);
  if (bounds.length > 1) map.fitBounds(bounds, { padding: [30, 30], maxZoom: 12 });
  else if (bounds.length === 1) map.setView(bounds[0], 11);
}

function drawMeters(parent, meters) {
  links.clearLayers();
  marks.clearLayers();
  const bounds = [];
  for (const m of meters) {
    if (!m.lat && !m.lon) continue;
    const colour = m.suspicion ? "#f85149" : m.role === "balance" ? "#79c0ff" : "#2ea043";
    L.polyline([[parent.lat, parent.lon], [m.lat, m.lon]],
      { color: "#3b5b78", weight: 1, interactive: false }).addTo(links);
    L.circleMarker([m.lat, m.lon], { radius: m.role === "balance" ? 7 : 4, color: "#0b2233",
      weight: 1, fillColor: colour, fillOpacity: 0.9 }).addTo(marks)
      .bindTooltip(`<b>${esc(m.serial)}</b> ${esc(m.role)} · today ${fmt(m.today, 2)}` +
        (m.suspicion ? `<br>suspect: ${esc(m.rules)}` : ""));
    bounds.push([m.lat, m.lon]);
  }
  document.body.dataset.marks = String(marks.getLayers().length);
  if (bounds.length) map.fitBounds(bounds, { padding: [30, 30], maxZoom: 15 });
}

// -- the hourly chart ------------------------------------------------------------------

const chart = new Chart($("chart"), {
  type: "bar",
  data: { labels: [], datasets: [
    { type: "line", label: "input", data: [], borderColor: "#79c0ff", pointRadius: 0 },
    { type: "line", label: "output", data: [], borderColor: "#3fb950", pointRadius: 0 },
    { label: "loss", data: [], backgroundColor: "#f85149" },
  ] },
  options: {
    animation: false, responsive: true,
    scales: { x: { ticks: { color: "#9fb3c8", maxTicksLimit: 12 } },
              y: { ticks: { color: "#9fb3c8" } } },
    plugins: { legend: { labels: { color: "#dde5ee" } } },
  },
});

async function drawChart(node, day) {
  $("chart-title").textContent = node.name;
  const admin = LEVELS.admin.includes(node.level);
  const q = new URLSearchParams({ period: "hour", from: day });
  if (admin) {
    q.set("level", node.level);
    if (node.level !== "republic") q.set("node", node.admin_unit);
  } else {
    q.set("level", node.level);
    q.set("node", node.node_id);
  }
  const r = await api("/api/balances?" + q);
  // Administrative units come link by link (the electricity chain's, which the chart
  // shows): input of the highest link, loss of all.
  const chain = LEVELS.chains.electricity;
  const rows = r.rows.filter((x) => !admin || chain.includes(x.link));
  const by = new Map();
  for (const x of rows) {
    const k = x.period;
    const cur = by.get(k) || { input: null, output: null, loss: 0, top: 99 };
    const rank = admin ? chain.indexOf(x.link) : 0;
    if (rank < cur.top) { cur.top = rank; cur.input = x.input; }
    cur.loss += x.loss || 0;
    by.set(k, cur);
  }
  const labels = [...by.keys()].sort();
  // The newest hours read 0 until the readings that close them arrive: not a collapse.
  while (labels.length && !by.get(labels[labels.length - 1]).input) labels.pop();
  chart.data.labels = labels.map((l) => l.slice(11, 16));
  chart.data.datasets[0].data = labels.map((l) => by.get(l).input);
  chart.data.datasets[1].data = labels.map((l) => by.get(l).input - by.get(l).loss);
  chart.data.datasets[2].data = labels.map((l) => by.get(l).loss);
  chart.update();
}

// -- tables ----------------------------------------------------------------------------

function fill(id, rows, empty) {
  const body = $(id).querySelector("tbody");
  const cols = $(id).querySelectorAll("thead th").length || 1;
  body.innerHTML = rows.length ? rows.join("") :
    `<tr><td class="empty" colspan="${cols}">${esc(empty)}</td></tr>`;
}

function regionRows(regions) {
  return regions.sort((a, b) => a.name.localeCompare(b.name)).map((r) => {
    const f = (r.today || {}).electricity || {};
    return `<tr class="click" data-node="${esc(r.node_id)}" data-input="${f.input ?? ""}"` +
      ` data-loss-pct="${f.loss_pct ?? ""}"><td>${esc(r.name)}</td>` +
      `<td class="num in">${fmt(f.input)}</td><td class="num out">${fmt(f.output)}</td>` +
      `<td class="num loss"><i class="${lossClass(f)}"></i>${pct(f.loss_pct)}</td>` +
      `<td class="num">${share(f.completeness)}</td>` +
      `<td class="num online">${r.online}/${r.meters}</td></tr>`;
  });
}

function childRows(children) {
  $("children").querySelector("thead").innerHTML =
    "<tr><th>name</th><th>level</th><th>in</th><th>loss %</th><th>complete</th>" +
    "<th>consumers</th><th>online</th></tr>";
  return children.map((c) => {
    const f = figures(c);
    return `<tr class="click" data-node="${esc(c.node_id)}"><td>${esc(c.name)}</td>` +
      `<td>${esc(c.level)}</td><td class="num">${fmt(f.input)}</td>` +
      `<td class="num">${pct(f.loss_pct)}</td><td class="num">${share(f.completeness)}</td>` +
      `<td class="num">${c.consumers}</td><td class="num">${c.online}/${c.meters}</td></tr>`;
  });
}

function meterRows(meters) {
  $("children").querySelector("thead").innerHTML =
    "<tr><th>meter</th><th>role</th><th>account</th><th>today</th><th>measured h</th>" +
    "<th>suspect</th></tr>";
  return meters.map((m) =>
    `<tr data-meter="${esc(m.serial)}"><td>${esc(m.serial)}</td><td>${esc(m.role)}</td>` +
    `<td>${esc(m.account_id)}</td><td class="num">${fmt(m.today, 2)}</td>` +
    `<td class="num">${m.measured_hours ?? "–"}/${m.hours ?? "–"}</td>` +
    `<td>${m.suspicion ? esc(m.rules) : ""}</td></tr>`);
}

function clickable(id) {
  $(id).querySelectorAll("tbody tr.click").forEach((tr) => {
    tr.addEventListener("click", () => openNode(tr.dataset.node));
  });
}

function timeOf(ts) {
  // The API gives UTC; the room speaks Tashkent time (UTC+5, no DST).
  const d = new Date(new Date(String(ts).replace(" ", "T") + (String(ts).endsWith("Z") ? "" : "Z")).getTime() + 5 * 3600e3);
  return isNaN(d) ? String(ts) : d.toISOString().slice(5, 16).replace("T", " ");
}

// -- refresh ---------------------------------------------------------------------------

async function openNode(nodeId) {
  state.node = nodeId;
  await refreshNode();
}

async function refreshNode() {
  const d = await api("/api/nodes/" + encodeURIComponent(state.node));
  const crumbs = [...d.path, d.node];
  $("crumbs").innerHTML = crumbs.map((c) =>
    `<a data-node="${esc(c.node_id)}">${esc(c.name)}</a>`).join("");
  $("crumbs").querySelectorAll("a").forEach((a) =>
    a.addEventListener("click", () => openNode(a.dataset.node)));
  $("children-title").textContent = LEVELS.below[d.node.level] || "Below";
  if (d.children.length) {
    drawMap(d.node, d.children);
    fill("children", childRows(d.children), "nothing below");
    clickable("children");
  } else {
    const m = await api("/api/nodes/" + encodeURIComponent(state.node) + "/meters");
    drawMeters(d.node, m.meters);
    fill("children", meterRows(m.meters), "no meters here");
  }
  await drawChart(d.node, d.day);
}

function drawLink(d) {
  // A region's link to the centre, or the centre's to every region (none standalone).
  $("link-panel").hidden = !d.link;
  if (!d.link) return;
  const regions = d.node.regions.map((r) => r || "national").join(", ");
  $("link-title").textContent = `${d.node.node} (${d.node.role}, ${regions})` +
    (d.link.alarm ? ` · ALARM: ${d.link.alarm}` : "");
  fill("link", d.link.peers.map((p) =>
    `<tr><td>${esc(p.peer)}</td>` +
    `<td class="${p.connected ? "" : "state-failed"}">${p.connected ? "connected" : "cut"}</td>` +
    `<td>${p.last_contact ? timeOf(new Date(p.last_contact * 1000).toISOString()) : "never"}</td>` +
    `<td class="num">${fmt(p.lag_s, 1)}</td><td class="num">${fmt(p.lag_rows, 0)}</td>` +
    `<td class="num">${fmt(p.unconfirmed_bytes / 1e6, 1)} MB</td></tr>`), "no peers");
}

async function refresh() {
  try {
    const s = await api("/api/summary");
    const t = new Date((s.now + 5 * 3600) * 1000).toISOString();
    $("clock").textContent = `${t.slice(0, 10)} ${t.slice(11, 16)} Tashkent` +
      (s.clock_speed !== 1 ? ` (×${s.clock_speed})` : "");
    const e = (s.today || {}).electricity || {};
    $("kpi-online").textContent = s.online;
    $("kpi-meters").textContent = s.meters;
    $("kpi-completeness").textContent = share(e.completeness);
    $("kpi-in").textContent = fmt(e.input);
    $("kpi-loss").textContent = pct(e.loss_pct);
    $("kpi-pushes").textContent = fmt(s.pushes_per_s, 0);
    $("kpi-pushes-label").title = `pushes received per real second over the last ` +
      `${fmt(s.rates_window_s, 0)} s; stored: ${fmt(s.stored_rows_per_s, 0)} rows/s`;
    if (!state.node) {
      const roots = await api("/api/nodes?level=republic");
      state.node = roots.nodes.length ? roots.nodes[0].node_id : null;
    }
    const [link, regions, losses, suspects, alarms, queue, waves, centres, orders, outages] =
      await Promise.all([
      api("/api/link"),
      api("/api/nodes?level=region"),
      api("/api/losses?level=transformer&top=10&min_completeness=0.5"),
      api("/api/anomalies?limit=10"),
      api("/api/alarms?limit=12"),
      api("/api/commands?kind=disconnect,reconnect,rekey,firmware&limit=12"),
      api("/api/waves"),
      api("/api/service-centres"),
      api("/api/workorders?state=active&limit=500"),
      api("/api/outages?limit=200"),
    ]);
    drawOutages(outages.outages);
    fill("outages", outages.outages.slice(0, 12).map((o) =>
      `<tr class="click" data-node="${esc(o.node_id)}">` +
      `<td>${timeOf(new Date(o.started_at * 1000).toISOString())}</td>` +
      `<td>${esc(o.level)} ${esc(o.name || o.node_id)}</td>` +
      `<td class="num ${o.ongoing ? "state-failed" : ""}">${fmt(o.minutes, 0)}${o.ongoing ? "+" : ""}</td>` +
      `<td class="num">${fmt(o.consumers, 0)}</td><td class="num">${o.restored}/${o.reported}</td>` +
      `<td>${o.balance_saw === 1 ? "yes" : o.balance_saw === 0 ? "no" : "–"}</td></tr>`),
      "no outages in the last day");
    clickable("outages");
    drawLink(link);
    const table = $("regions");
    table.dataset.day = regions.day;
    fill("regions", regionRows(regions.nodes), "no regions imported");
    clickable("regions");
    fill("losses", losses.rows.map((r) =>
      `<tr class="click" data-node="${esc(r.node_id)}"><td>${esc(r.node_id)}</td>` +
      `<td class="num">${fmt(r.loss)}</td><td class="num">${pct(r.loss_pct)}</td>` +
      `<td class="num">${pct(r.loss_pct_before)}</td><td class="num">${share(r.completeness)}</td></tr>`),
      "no balances with enough completeness yet");
    clickable("losses");
    fill("suspects", suspects.rows.map((r) =>
      `<tr class="click" data-node="${esc(r.node_id)}"><td>${esc(r.meter)}</td>` +
      `<td>${esc(r.node_id)}</td><td class="num">${fmt(r.score)}</td><td>${esc(r.rules)}</td></tr>`),
      "none found yet");
    clickable("suspects");
    fill("alarms", alarms.rows.map((r) =>
      `<tr><td>${timeOf(r.ts)}</td><td>${esc(r.meter)}</td><td>${esc(r.name)}</td>` +
      `<td>${esc(r.node_id)}</td></tr>`), "no alarms in the last day");
    const cmds = [...queue.pending, ...queue.recent.filter(
      (h) => !queue.pending.some((p) => p.command_id === h.command_id))].slice(0, 12);
    fill("queue", cmds.map((c) =>
      `<tr><td>${esc(c.serial)}</td><td>${esc(c.kind)}</td>` +
      `<td class="state-${esc(c.state)}">${esc(c.state)}</td><td>${esc(c.requested_by)}</td>` +
      `<td>${esc(c.reason)}</td></tr>`), "no switching, key or firmware commands");
    fill("waves", waves.waves.slice(-8).reverse().map((w) =>
      `<tr><td>${esc(w.wave_id)}</td><td>${esc(w.kind)}</td><td>${esc(w.region)}</td>` +
      `<td class="state-${esc(w.state)}" title="${esc(w.detail)}">${esc(w.state)}</td>` +
      `<td class="num">${fmt(w.outcomes.done || 0, 0)}</td>` +
      `<td class="num">${fmt(w.outcomes.failed || 0, 0)}</td>` +
      `<td class="num">${w.to_go === null ? "" : fmt(w.to_go, 0)}</td></tr>`),
      "no waves");
    fill("centres", centres.centres.map((c) =>
      `<tr><td title="${esc(c.phone)}">${esc(c.name)}</td><td>${esc(c.region)}</td>` +
      `<td>${esc(c.districts.join(", "))}</td><td class="num">${fmt(c.active, 0)}</td>` +
      `<td class="num ${c.overdue ? "state-failed" : ""}">${fmt(c.overdue, 0)}</td></tr>`),
      "no service centres imported (headend centres import)");
    const nowS = s.now;  // the store's clock (the demo's runs fast)
    drawOrders(orders.orders, nowS);
    fill("workorders", orders.orders.slice(0, 12).map((o) =>
      `<tr class="click" data-node="${esc(o.node_id)}">` +
      `<td class="${o.due_at < nowS ? "state-failed" : ""}">` +
      `${timeOf(new Date(o.due_at * 1000).toISOString())}</td>` +
      `<td class="num">${o.priority}</td><td>${esc(o.cause.replace("_", " "))}</td>` +
      `<td>${esc(o.serial)}</td><td>${esc(o.centre_id || "none")}</td>` +
      `<td class="state-${esc(o.state)}">${esc(o.state)}</td></tr>`),
      "no open work orders");
    clickable("workorders");
    if (state.node) await refreshNode();
    state.lastOk = new Date();
    $("status").textContent = "live · updated " + state.lastOk.toLocaleTimeString();
    $("status").className = "status";
    document.body.dataset.ready = "1";
  } catch (err) {
    // Shown on the page (the API may be warming up); not a script error.
    $("status").textContent = "not updated: " + err.message;
    $("status").className = "status bad";
  }
}

start();
