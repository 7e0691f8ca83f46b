// The RobustMQ dashboard: plain DOM code over the node's admin API (/api/v1/...).
// No external resources: everything it loads is served by the node itself.
"use strict";

const POLL_MS = 2000;          // overview refresh (status and charts)
const LIST_LIMIT = 50;         // rows per page in the tables
const CHART_POINTS = 90;       // samples kept per chart (3 minutes at POLL_MS)

const $ = (id) => document.getElementById(id);
let authHeader = sessionStorage.getItem("robustmq.auth") || null;
let currentTab = "overview";
const pages = { clients: 1, subscriptions: 1, topics: 1, retained: 1, kafka: 1, amqp: 1 };
const WS_MAX_ROWS = 500;       // messages kept on the WebSocket client page
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
    const why = Object.entries(s.dropped_by_reason || {}).map(([k, n]) => `${k.replace("/", " ")}: ${n}`);
    $("stat-dropped-why").textContent = why.join(", ");
    const byProtocol = s.connections_by_protocol || {};
    for (const p of ["mqtt", "kafka", "amqp"]) {
      $(`stat-conn-${p}`).textContent = p in byProtocol ? byProtocol[p] : "off";
    }
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
    if (currentTab === "kafka" || currentTab === "amqp") refreshList(currentTab);
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

// Kafka and AMQP: a node without those listeners answers 404 (see docs/operations.md).

const lagChart = new LineChart($("chart-kafka-lag"), [{ label: "lag", color: "#cf222e" }], CHART_POINTS);

function notServed(name, e) {
  const note = $(`${name}-note`);
  if (e && e.status === 404) { note.hidden = false; note.textContent = e.message; return true; }
  note.hidden = true;
  return false;
}

function lagBars(offsets) {
  const span = document.createElement("span");
  const max = Math.max(1, ...offsets.map((o) => o.lag || 0));
  for (const o of offsets) {
    const row = document.createElement("div");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(80 * (o.lag || 0) / max)}px`;
    row.append(bar, `${o.topic}/${o.partition}: ${o.lag == null ? "–" : o.lag}`);
    row.dataset.lag = String(o.lag);
    span.append(row);
  }
  return span;
}

lists.kafka = async function kafka() {
  let topics, groups;
  try {
    topics = await api(`/api/v1/kafka/topics?${listQuery("kafka", "topic")}`);
    groups = await api("/api/v1/kafka/groups?limit=50");
  } catch (e) {
    if (notServed("kafka", e)) { fillTable("kafka-topics-table", [], 7); fillTable("kafka-groups-table", [], 6); return; }
    throw e;
  }
  notServed("kafka", null);
  showPage("kafka", topics.meta);
  fillTable("kafka-topics-table", topics.data.map((t) => [
    t.name, t.partitions, t.messages, t.bytes,
    t.partition_details.map((p) => `${p.partition}: ${p.log_start_offset}…${p.log_end_offset}`).join(", "),
    t.overrides.join(", "),
    button("Delete", "danger", async () => {
      if (!confirm(`Delete the Kafka topic ${t.name} and its data?`)) return;
      try { await api(`/api/v1/kafka/topics/${encodeURIComponent(t.name)}`, { method: "DELETE" }); }
      catch (e) { setError(`delete: ${e.message}`); }
      lists.kafka();
    }),
  ]), 7);
  fillTable("kafka-groups-table", groups.data.map((g) => [
    g.group_id, g.state, g.protocol || "", g.members.length, g.lag, lagBars(g.offsets),
  ]), 6);
  lagChart.push([groups.data.reduce((sum, g) => sum + g.lag, 0)]);
};

lists.amqp = async function amqp() {
  let queues, exchanges;
  const params = new URLSearchParams({ page: pages.amqp, limit: LIST_LIMIT });
  const f = $("amqp-filter").value.trim();
  if (f) params.set("name", f);
  try {
    queues = await api(`/api/v1/amqp/queues?${params}`);
    exchanges = await api("/api/v1/amqp/exchanges?limit=200");
  } catch (e) {
    if (notServed("amqp", e)) { fillTable("amqp-queues-table", [], 11); fillTable("amqp-exchanges-table", [], 5); return; }
    throw e;
  }
  notServed("amqp", null);
  showPage("amqp", queues.meta);
  fillTable("amqp-queues-table", queues.data.map((q) => {
    const depth = document.createElement("span");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.min(120, Math.round(120 * q.messages / Math.max(1, q.max_length)))}px`;
    depth.append(bar, String(q.messages));
    const dropped = Object.entries(q.dropped).map(([why, n]) => `${why}: ${n}`).join(", ");
    return [
      q.vhost, q.name, q.messages_ready, q.messages_unacknowledged, depth, q.consumers,
      fmtRate(q.publish_rate), fmtRate(q.deliver_rate), dropped, q.durable ? "yes" : "no",
      button("Purge", "danger", async () => {
        if (!confirm(`Drop the ${q.messages_ready} ready message(s) of ${q.name}?`)) return;
        try {
          await api(`/api/v1/amqp/queues/${encodeURIComponent(q.vhost)}/${encodeURIComponent(q.name)}/contents`, { method: "DELETE" });
        } catch (e) { setError(`purge: ${e.message}`); }
        lists.amqp();
      }),
    ];
  }), 11);
  fillTable("amqp-exchanges-table", exchanges.data.map((x) => [
    x.vhost, x.name === "" ? "(AMQP default)" : x.name, x.type, x.durable ? "yes" : "no", x.bindings,
  ]), 5);
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
  if (name === "kafka") lagChart.draw();
  if (name === "websocket") wsPrepare();
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

// WebSocket client: the browser connects to the node's MQTT-over-WebSocket
// listener with MQTT.js (/vendor/mqtt.min.js, loaded when the page is first opened).

let wsClient = null;

function loadMqttJs() {
  if (window.mqtt) return Promise.resolve(window.mqtt);
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = "/vendor/mqtt.min.js";
    s.onload = () => resolve(window.mqtt);
    s.onerror = () => reject(new Error("could not load /vendor/mqtt.min.js"));
    document.head.appendChild(s);
  });
}

function wsState(text, cls) { const el = $("ws-state"); el.textContent = text; el.className = cls || ""; }

function wsConnected(on) {
  $("ws-connect").disabled = on;
  $("ws-disconnect").disabled = !on;
  $("ws-subscribe").disabled = !on;
  $("ws-publish").disabled = !on;
}

async function wsPrepare() {
  if (!$("ws-client-id").value) $("ws-client-id").value = `dashboard-${Math.random().toString(16).slice(2, 10)}`;
  if ($("ws-url").value) return;
  try {
    const ls = await api("/api/v1/listeners");
    const l = ls.data.find((x) => x.protocol === "mqtt" && (x.transport === "ws" || x.transport === "wss") && x.running);
    if (l) {
      const host = ["0.0.0.0", "::", ""].includes(l.bind) ? location.hostname : (l.host || l.bind);
      $("ws-url").value = `${l.transport}://${host.includes(":") ? `[${host}]` : host}:${l.port}/mqtt`;
    } else {
      wsState("this node has no MQTT WebSocket listener ([[listeners]] transport = \"ws\")", "bad");
    }
  } catch (e) { setError(`listeners: ${e.message}`); }
}

function wsMessage(topic, payload, packet) {
  const tbody = $("ws-messages").querySelector("tbody");
  const tr = tbody.insertRow(0);
  let text;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(payload); }
  catch (e) { text = `(${payload.length} bytes, not UTF-8)`; }
  for (const cell of [new Date().toLocaleTimeString(), topic, packet.qos, packet.retain ? "yes" : "", text]) {
    tr.insertCell().textContent = String(cell);
  }
  while (tbody.rows.length > WS_MAX_ROWS) tbody.deleteRow(-1);
}

$("ws-connect-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (wsClient) return;
  const url = $("ws-url").value.trim();
  wsState(`connecting to ${url}…`);
  let mqttLib;
  try { mqttLib = await loadMqttJs(); } catch (err) { wsState(err.message, "bad"); return; }
  const opts = { clientId: $("ws-client-id").value, clean: true, reconnectPeriod: 0, connectTimeout: 10000, protocolVersion: 4 };
  if ($("ws-user").value) { opts.username = $("ws-user").value; opts.password = $("ws-password").value; }
  const client = mqttLib.connect(url, opts);
  wsClient = client;
  client.on("connect", () => { wsState(`connected to ${url} as ${opts.clientId}`, "ok"); wsConnected(true); });
  client.on("message", wsMessage);
  client.on("error", (err) => wsState(`error: ${err.message}`, "bad"));
  client.on("close", () => {
    if (wsClient === client) {
      wsClient = null;
      wsConnected(false);
      if ($("ws-state").className !== "bad") wsState("disconnected");
      $("ws-subscriptions").replaceChildren();
      client.end(true);
    }
  });
});

$("ws-disconnect").addEventListener("click", () => { if (wsClient) wsClient.end(); });

$("ws-sub-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!wsClient) return;
  const topic = $("ws-sub-topic").value, qos = Number($("ws-sub-qos").value);
  wsClient.subscribe(topic, { qos }, (err, granted) => {
    if (err) { wsState(`subscribe: ${err.message}`, "bad"); return; }
    for (const g of granted) {
      const li = document.createElement("li");
      li.dataset.topic = g.topic;
      li.append(g.qos === 128 ? `${g.topic} (refused) ` : `${g.topic} (QoS ${g.qos}) `);
      li.append(button("Unsubscribe", "", () => { if (wsClient) wsClient.unsubscribe(g.topic); li.remove(); }));
      $("ws-subscriptions").append(li);
    }
  });
});

$("ws-pub-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!wsClient) return;
  const topic = $("ws-pub-topic").value, qos = Number($("ws-pub-qos").value), retain = $("ws-pub-retain").checked;
  const result = $("ws-pub-result");
  wsClient.publish(topic, $("ws-pub-payload").value, { qos, retain }, (err) => {
    result.className = err ? "bad" : "ok";
    result.textContent = err ? `not published: ${err.message}` : `published to ${topic} (QoS ${qos}${retain ? ", retained" : ""})`;
  });
});

$("ws-clear").addEventListener("click", () => $("ws-messages").querySelector("tbody").replaceChildren());

window.addEventListener("resize", () => { rateChart.draw(); connChart.draw(); lagChart.draw(); });

selectTab("overview");
pollStatus();
setInterval(pollStatus, POLL_MS);
