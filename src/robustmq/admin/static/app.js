// The RobustMQ dashboard: plain DOM code over the node's admin API (/api/v1/...).
// No external resources: everything it loads is served by the node itself.
"use strict";

const POLL_MS = 2000;          // overview refresh (status and charts)
const LIST_LIMIT = 50;         // rows per page in the tables
const CHART_POINTS = 90;       // samples kept per chart (3 minutes at POLL_MS)

const $ = (id) => document.getElementById(id);
let authHeader = sessionStorage.getItem("robustmq.auth") || null;
let currentTab = "overview";
const pages = { clients: 1, subscriptions: 1, topics: 1, retained: 1 };
let lastStatus = null;

class HTTPError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (authHeader) opts.headers["Authorization"] = authHeader;
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (resp.status === 401) {
    showLogin(true);
    throw new HTTPError(401, "authentication required");
  }
  if (!resp.ok) {
    const msg = body && body.error ? body.error.message : resp.statusText;
    throw new HTTPError(resp.status, msg);
  }
  return body;
}

function showLogin(show) {
  $("login").hidden = !show;
  document.querySelector("main").hidden = show;
}

function setError(msg) { $("error-line").textContent = msg || ""; }

function fmtDuration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : ""; }

function fmtRate(v) { return v >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1); }

// Replace a table body's rows; cells are text (never HTML) or DOM nodes.
function fillTable(id, rows, columns) {
  const tbody = $(id).querySelector("tbody");
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = tbody.insertRow(), td = tr.insertCell();
    td.colSpan = columns;
    td.className = "empty";
    td.textContent = "nothing here";
    return;
  }
  for (const cells of rows) {
    const tr = tbody.insertRow();
    for (const cell of cells) {
      const td = tr.insertCell();
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell == null ? "" : String(cell);
    }
  }
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

// Overview

const rateChart = new LineChart($("chart-rates"), [
  { label: "in", color: "#1f6feb" }, { label: "out", color: "#8250df" }, { label: "dropped", color: "#cf222e" },
], CHART_POINTS);
const connChart = new LineChart($("chart-connections"), [{ label: "connections", color: "#1a7f37" }], CHART_POINTS);

async function pollStatus() {
  try {
    const st = await api("/api/v1/status");
    const s = st.stats;
    $("conn-state").className = "state ok";
    $("conn-state").title = "admin API reachable";
    $("node-line").textContent = `${st.node.id} · ${st.node.version} · up ${fmtDuration(st.node.uptime_seconds)}`;
    $("stat-connections").textContent = s.connections;
    $("stat-sessions").textContent = s.sessions;
    $("stat-subscriptions").textContent = s.subscriptions;
    $("stat-retained").textContent = s.retained;
    $("stat-dropped").textContent = s.messages_dropped;
    $("stat-uptime").textContent = fmtDuration(st.node.uptime_seconds);
    if (lastStatus) {
      const dt = Math.max(st.time - lastStatus.time, 0.001), p = lastStatus.stats;
      const rin = Math.max(s.messages_received - p.messages_received, 0) / dt;
      const rout = Math.max(s.messages_sent - p.messages_sent, 0) / dt;
      const rdrop = Math.max(s.messages_dropped - p.messages_dropped, 0) / dt;
      $("stat-rate-in").textContent = fmtRate(rin);
      $("stat-rate-out").textContent = fmtRate(rout);
      rateChart.push([rin, rout, rdrop]);
    }
    connChart.push([s.connections]);
    lastStatus = st;
    fillTable("nodes-table", st.cluster.nodes.map((n) => [n.id, n.version, n.roles.join(", "), n.status, fmtDuration(n.uptime_seconds)]), 5);
    setError("");
  } catch (e) {
    $("conn-state").className = "state bad";
    $("conn-state").title = String(e.message);
    if (e.status !== 401) setError(`status: ${e.message}`);
  }
}

async function loadListeners() {
  const ls = await api("/api/v1/listeners");
  fillTable("listeners-table", ls.data.map((l) => [l.name, l.protocol, l.transport, `${l.host || l.bind}:${l.port}`, l.sockets == null ? "" : l.sockets, l.running ? "yes" : "no"]), 6);
}

// Lists

function listQuery(name, filterKey) {
  const params = new URLSearchParams({ page: pages[name], limit: LIST_LIMIT });
  const f = $(`${name}-filter`).value.trim();
  if (f) params.set(filterKey, f);
  return params.toString();
}

function showPage(name, meta) {
  const last = Math.max(1, Math.ceil(meta.count / meta.limit));
  $(`${name}-page`).textContent = `page ${meta.page} of ${last} · ${meta.count} total`;
}

const lists = {
  async clients() {
    const r = await api(`/api/v1/clients?${listQuery("clients", "client_id")}`);
    showPage("clients", r.meta);
    fillTable("clients-table", r.data.map((c) => [
      c.client_id, c.username, c.peer, `MQTT ${c.protocol_level === 3 ? "3.1" : "3.1.1"}`, c.keepalive,
      c.subscriptions, c.inflight, c.queued,
      button("Kick", "danger", async () => {
        if (!confirm(`Disconnect ${c.client_id}?`)) return;
        try { await api(`/api/v1/clients/${encodeURIComponent(c.client_id)}`, { method: "DELETE" }); }
        catch (e) { setError(`kick: ${e.message}`); }
        setTimeout(() => lists.clients(), 300);
      }),
    ]), 9);
  },
  async subscriptions() {
    const r = await api(`/api/v1/subscriptions?${listQuery("subscriptions", "client_id")}`);
    showPage("subscriptions", r.meta);
    fillTable("subscriptions-table", r.data.map((s) => [s.topic, s.client_id, s.qos]), 3);
  },
  async topics() {
    const r = await api(`/api/v1/topics?${listQuery("topics", "topic")}`);
    showPage("topics", r.meta);
    fillTable("topics-table", r.data.map((t) => [t.topic, t.subscribers]), 2);
  },
  async retained() {
    const r = await api(`/api/v1/retained?${listQuery("retained", "topic")}`);
    showPage("retained", r.meta);
    const path = (m) => `/api/v1/retained/${encodeURIComponent(m.topic)}`;
    fillTable("retained-table", r.data.map((m) => {
      const actions = document.createElement("span");
      actions.append(
        button("View", "", async () => {
          try {
            const d = await api(path(m));
            const pre = $("retained-detail");
            pre.hidden = false;
            pre.textContent = `${d.topic} (QoS ${d.qos}, ${d.size} bytes)\n\n` + (d.payload != null ? d.payload : `base64: ${d.payload_base64}`);
          } catch (e) { setError(`retained: ${e.message}`); }
        }),
        " ",
        button("Delete", "danger", async () => {
          if (!confirm(`Delete the retained message on ${m.topic}?`)) return;
          try { await api(path(m), { method: "DELETE" }); } catch (e) { setError(`delete: ${e.message}`); }
          lists.retained();
        }),
      );
      return [m.topic, m.qos, m.size, fmtTime(m.timestamp), actions];
    }), 5);
  },
};

async function refreshList(name) {
  try { await lists[name](); setError(""); }
  catch (e) { if (e.status !== 401) setError(`${name}: ${e.message}`); }
}

// Tabs, forms

function selectTab(name) {
  currentTab = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${name}`;
  if (lists[name]) refreshList(name);
  if (name === "overview") { rateChart.draw(); connChart.draw(); loadListeners().catch(() => {}); }
}

document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
document.querySelectorAll("button.refresh").forEach((b) => b.addEventListener("click", () => refreshList(b.dataset.list)));
document.querySelectorAll(".pager button").forEach((b) => b.addEventListener("click", () => {
  const name = b.dataset.list;
  pages[name] = Math.max(1, pages[name] + Number(b.dataset.page));
  refreshList(name);
}));
for (const name of Object.keys(lists)) {
  $(`${name}-filter`).addEventListener("keydown", (e) => {
    if (e.key === "Enter") { pages[name] = 1; refreshList(name); }
  });
}

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const result = $("pub-result");
  result.className = "";
  result.textContent = "publishing…";
  try {
    const r = await api("/api/v1/publish", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        topic: $("pub-topic").value,
        payload: $("pub-payload").value,
        qos: Number($("pub-qos").value),
        retain: $("pub-retain").checked,
      }),
    });
    result.className = "ok";
    result.textContent = `published to ${r.topic} (${r.size} bytes, QoS ${r.qos}${r.retain ? ", retained" : ""}): reached ${r.reached} subscriber(s)`;
  } catch (err) {
    result.className = "bad";
    result.textContent = `not published: ${err.message}`;
  }
});

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("login-token").value, user = $("login-user").value;
  authHeader = token ? `Bearer ${token}` : `Basic ${btoa(`${user}:${$("login-password").value}`)}`;
  sessionStorage.setItem("robustmq.auth", authHeader);
  showLogin(false);
  selectTab(currentTab);
  pollStatus();
});

window.addEventListener("resize", () => { rateChart.draw(); connChart.draw(); });

selectTab("overview");
pollStatus();
setInterval(pollStatus, POLL_MS);
