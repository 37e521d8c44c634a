
// ----- rendering -----
function render() {
  $("tab-services").href = hrefFor({ name: "services", node: null });
  $("tab-nodes").href = hrefFor({ name: "nodes", node: null });
  for (const [id, name] of [["tab-services", "services"], ["tab-nodes", "nodes"]]) {
    if (view.name === name) $(id).setAttribute("aria-current", "page"); else $(id).removeAttribute("aria-current");
  }
  $("services-view").hidden = view.name !== "services";
  $("instances-view").hidden = view.name !== "services";
  $("nodes-view").hidden = view.name !== "nodes";
  if (view.name === "services") { renderServices(); renderInstances(); } else renderNodes();
  renderDetail();
  tick();
  hints();
}

function renderServices() {
  const services = new Map();
  for (const node of state.nodes.values()) {
    for (const s of node.services) {
      if (!instanceMatches(node, s)) continue;
      const entry = services.get(s.name) || { name: s.name, versions: new Set(), counts: { UP: 0, DOWN: 0, STARTING: 0, STOPPING: 0 }, total: 0 };
      if (s.version) entry.versions.add(s.version);
      entry.counts[node.status] = (entry.counts[node.status] || 0) + 1;
      entry.total++;
      services.set(s.name, entry);
    }
  }
  const share = (e) => e.total ? e.counts.UP / e.total : 0;
  table("services", [
    { key: "name", label: "Service", value: (e) => e.name, cell: (e) => { const td = document.createElement("td"); td.append(link(e.name, { service: e.name, node: null })); return td; } },
    { key: "versions", label: "Versions", cls: "wide", value: (e) => e.versions.size, cell: (e) => text("td", [...e.versions].sort(compare).join(", ") || "—") },
    { key: "instances", label: "Instances", value: (e) => e.total, cell: (e) => text("td", e.total) },
    { key: "status", label: "Status", value: (e) => e.total - e.counts.UP, cell: (e) => {
      const td = document.createElement("td");
      td.className = "counts";
      for (const s of STATUSES) {
        if (!e.counts[s]) continue;
        if (td.childNodes.length) td.append(" · ");
        const part = text("span", e.counts[s] + " " + s, s);
        part.dataset.status = s;
        td.append(part);
      }
      return td;
    } },
    { key: "share", label: "UP share", value: share, cell: (e) => {
      const td = document.createElement("td");
      const wrap = text("span", "", "share");
      const bar = text("span", "", "bar");
      const fill = document.createElement("span");
      fill.style.width = Math.round(share(e) * 100) + "%";
      bar.append(fill);
      wrap.append(bar, Math.round(share(e) * 100) + "%");
      td.append(wrap);
      return td;
    } },
  ], [...services.values()], (tr, e) => { tr.dataset.service = e.name; if (e.name === view.service) tr.className = "selected"; });
  const empty = $("services-empty");
  empty.hidden = services.size > 0;
  empty.textContent = state.denied === 401 ? "A token is needed to read this registry: enter one in the Token field above."
    : state.denied === 403 ? "This token may not read the registry: use another token."
    : state.nodes.size ? "No service matches the search and status filter." : "No services registered" + (state.token ? " that this token may read." : ".");
}

function renderInstances() {
  $("instances-title").textContent = view.service ? "Instances of " + view.service : "Instances";
  $("instances-hint").hidden = !!view.service;
  $("instances").hidden = !view.service;
  const rows = [];
  if (view.service) {
    for (const node of state.nodes.values()) {
      for (const s of node.services) if (s.name === view.service && instanceMatches(node, s)) rows.push([node, s]);
    }
  }
  table("instances", [
    { key: "node", label: "Node", value: (r) => r[0].nodeId, cell: (r) => { const td = document.createElement("td"); td.append(link(r[0].nodeId, { node: r[0].nodeId })); return td; } },
    { key: "status", label: "Status", value: (r) => RANK[r[0].status], cell: (r) => statusCell(r[0].status) },
    { key: "heartbeat", label: "Last heartbeat", value: (r) => -r[0].timestamp, cell: (r) => age("td", r[0].timestamp, "heartbeat") },
    { key: "address", label: "Address", value: (r) => r[0].address, cell: (r) => text("td", r[0].address) },
    { key: "version", label: "Version", value: (r) => r[1].version || "", cell: (r) => text("td", r[1].version || "—") },
    { key: "check", label: "Check", value: (r) => checkCell(r[0]).textContent, cell: (r) => checkCell(r[0]) },
    { key: "age", label: "Registered", cls: "wide", value: (r) => -r[0].registeredAt, cell: (r) => age("td", r[0].registeredAt) },
    { key: "weight", label: "Weight", cls: "wide", value: (r) => r[1].weight == null ? 1 : r[1].weight, cell: (r) => text("td", r[1].weight == null ? "1" : r[1].weight) },
  ], rows, (tr, r) => { tr.dataset.node = r[0].nodeId; if (r[0].nodeId === view.node) tr.className = "selected"; });
}

function renderNodes() {
  const rows = [...state.nodes.values()].filter(nodeMatches);
  table("nodes", [
    { key: "node", label: "Node", value: (n) => n.nodeId, cell: (n) => { const td = document.createElement("td"); td.append(link(n.nodeId, { node: n.nodeId })); return td; } },
    { key: "status", label: "Status", value: (n) => RANK[n.status], cell: (n) => statusCell(n.status) },
    { key: "heartbeat", label: "Last heartbeat", value: (n) => -n.timestamp, cell: (n) => age("td", n.timestamp, "heartbeat") },
    { key: "address", label: "Address", value: (n) => n.address, cell: (n) => text("td", n.address) },
    { key: "age", label: "Age", value: (n) => -n.registeredAt, cell: (n) => { const td = age("td", n.registeredAt); td.textContent = td.textContent.replace(/ ago$/, ""); td.dataset.suffix = ""; return td; } },
    { key: "services", label: "Services", value: (n) => servicesText(n), cell: (n) => text("td", servicesText(n)) },
    { key: "check", label: "Check", cls: "wide", value: (n) => checkCell(n).textContent, cell: checkCell },
  ], rows, (tr, n) => { tr.dataset.node = n.nodeId; if (n.nodeId === view.node) tr.className = "selected"; });
  $("nodes-empty").hidden = rows.length > 0;
  $("nodes-empty").textContent = state.nodes.size ? "No node matches the search and status filter." : "No nodes registered.";
}

function prop(dl, label, value) {
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value); else dd.textContent = value;
  dd.dataset.prop = label;
  dl.append(text("dt", label), dd);
}
function when(ms) {
  const e = document.createElement("span");
  e.append(stamp(ms) + " (");
  e.append(age("span", ms));
  e.append(")");
  return e;
}

function renderDetail() {
  const section = $("node-detail");
  section.hidden = !view.node;
  if (!view.node) return;
  $("node-close").href = hrefFor({ node: null });
  $("node-title").textContent = "Node " + view.node;
  const node = state.nodes.get(view.node);
  $("node-gone").hidden = !!node;
  $("node-body").hidden = !node;
  $("node-json").parentElement.hidden = !node;
  if (!node) return;
  const props = $("node-props");
  props.replaceChildren();
  prop(props, "Status", text("span", node.status, node.status));
  prop(props, "Address", node.address);
  prop(props, "Registered", when(node.registeredAt));
  prop(props, "Last heartbeat", when(node.timestamp));
  if (node.ttlMs) prop(props, "TTL", span(node.ttlMs / 1000));

  const check = checkOf(node), box = $("node-check");
  box.replaceChildren();
  if (!check) {
    prop(box, "Check", "none (the node's heartbeat alone keeps it registered)");
  } else {
    const failing = node.status === "DOWN" && check.output;
    prop(box, "Type", check.type.toUpperCase());
    prop(box, "Target", check.target);
    if (check.interval) prop(box, "Every", span(Number(check.interval) / 1000));
    if (check.timeout) prop(box, "Timeout", span(Number(check.timeout) / 1000));
    if (check.failures) prop(box, "Thresholds", check.failures + " failures down, " + (check.successes || 2) + " passes up");
    prop(box, "Result", text("span", failing ? "failing" : "passing", failing ? "DOWN" : "UP"));
    if (failing) prop(box, "Last output", check.output);
    if (failing && check.since) prop(box, "Since", when(check.since));
  }

  const services = $("node-services").tBodies[0];
  services.replaceChildren();
  for (const s of node.services) {
    const tr = document.createElement("tr");
    tr.append(text("td", s.name), text("td", s.version || "—"), text("td", s.weight == null ? "1" : s.weight));
    services.append(tr);
  }
  const meta = $("node-meta").tBodies[0];
  meta.replaceChildren();
  const entries = Object.entries(node.metadata || {}).filter(([k]) => !k.startsWith("check."));
  for (const s of node.services) for (const [k, v] of Object.entries(s.metadata || {})) entries.push([s.name + ": " + k, v]);
  for (const [k, v] of entries) { const tr = document.createElement("tr"); tr.append(text("td", k), text("td", v)); meta.append(tr); }
  if (!entries.length) { const tr = document.createElement("tr"); tr.append(text("td", "none", "muted")); meta.append(tr); }
  $("node-json").textContent = JSON.stringify(node, null, 2);
}

// Ages tick from the local clock, without a request.
function tick() {
  for (const e of document.querySelectorAll("[data-since]")) {
    const value = ago(Number(e.dataset.since));
    e.textContent = e.dataset.suffix === "" ? value.replace(/ ago$/, "") : value;
  }
  if (!state.live && state.lostAt) setConnection(false);
}
// A table wider than its box says so.
function hints() {
  for (const wrap of document.querySelectorAll(".table-wrap")) wrap.classList.toggle("overflowing", wrap.scrollWidth > wrap.clientWidth + 1);
}

// ----- the connection: live, or lost since when -----
function setConnection(live, message) {
  const el = $("connection");
  state.live = live;
  if (live) state.lostAt = null; else if (message !== "not allowed" && state.lostAt === null && state.revision !== null) state.lostAt = Date.now();
  el.className = live ? "live" : "lost";
  document.body.classList.toggle("stale", !live && state.lostAt !== null);
  if (live) el.textContent = "live";
  else if (message) el.textContent = message;
  else if (state.lostAt) el.textContent = "disconnected since " + stamp(state.lostAt).slice(11) + " (" + ago(state.lostAt) + "); figures may be stale, reconnecting";
}

// ----- the watch: server-sent events over fetch (headers for the token), resumed from the last revision -----
async function watch() {
  let delay = 500;
  for (;;) {
    const controller = new AbortController();
    state.abort = controller;
    try {
      const extra = { "accept": "text/event-stream" };
      let url = "/v1/watch";
      if (state.revision !== null) extra["last-event-id"] = String(state.revision); else url += "?snapshot=true";
      const response = await fetch(url, { headers: headers(extra), signal: controller.signal, cache: "no-store" });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const message = (body.error && body.error.message) || response.statusText;
        showError("watch: " + response.status + " " + message);
        if (response.status === 401 || response.status === 403) {
          state.denied = response.status;
          setConnection(false, "not allowed");
          render();
          return;
        }
        throw new Error(message);
      }
      state.denied = null;
      showError("");
      setConnection(true);
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
          }
          if (data) { try { apply(name, JSON.parse(data)); } catch (e) { console.warn("unreadable event", e); } }
        }
      }
      throw new Error("the stream ended");
    } catch (error) {
      if (controller.signal.aborted && state.abort !== controller) return;
      setConnection(false, state.revision === null ? "disconnected, reconnecting" : undefined);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

// ----- last heartbeats: the watch carries changes only, so one list request refreshes them all,
// less often the larger the registry (2 s up to 1,000 nodes, at most once a minute) -----
async function beats() {
  if (state.live && !document.hidden) {
    try {
      const response = await fetch("/v1/nodes", { headers: headers(), cache: "no-store" });
      if (response.ok) {
        for (const n of (await response.json()).nodes) {
          const known = state.nodes.get(n.nodeId);
          if (known && n.timestamp > known.timestamp) known.timestamp = n.timestamp;
        }
        render();
      }
    } catch (e) { /* the watch shows the connection state */ }
  }
  setTimeout(beats, Math.min(60000, Math.max(2000, state.nodes.size * 2)));
}

// ----- figures and the activity chart, from /stats -----
const SERIES = { registrations: "totalRegistrations", heartbeats: "totalHeartbeats", expiries: "totalCleanups" };
async function stats() {
  try {
    const response = await fetch("/stats", { headers: headers(), cache: "no-store" });
    if (!response.ok) return;
    const s = await response.json();
    const box = $("stats");
    box.replaceChildren();
    const figure = (label, value) => { const e = document.createElement("span"); e.append(label + " ", text("b", value)); e.dataset.figure = label; box.append(e); };
    figure("instances", s.activeInstances);
    figure("services", s.activeServices);
    figure("registrations", s.totalRegistrations);
    figure("heartbeats", s.totalHeartbeats);
    figure("expiries", s.totalCleanups);
    figure("uptime", span(s.uptime));
    if (s.selfPreservation) figure("self-preservation", "on");
    const now = performance.now();
    if (state.lastStats && s.uptime >= state.lastStats.s.uptime) {
      const seconds = Math.max(0.001, (now - state.lastStats.at) / 1000);
      const sample = {};
      for (const [series, field] of Object.entries(SERIES)) sample[series] = Math.max(0, (s[field] - state.lastStats.s[field]) / seconds);
      state.samples.push(sample);
      while (state.samples.length > 60) state.samples.shift();
      chart();
    }
    state.lastStats = { s, at: now };
  } catch (e) { /* the watch shows the connection state */ }
}
function rate(value) { return value >= 100 ? Math.round(value).toString() : value >= 10 ? value.toFixed(1) : value.toFixed(2).replace(/\.?0+$/, "") || "0"; }
function chart() {
  const top = Math.max(1, ...state.samples.flatMap((s) => Object.values(s)));
  for (const series of Object.keys(SERIES)) {
    // The newest sample at the right edge, two seconds apart.
    const first = 60 - state.samples.length;
    const points = state.samples.map((s, i) => ((first + i) * 600 / 59).toFixed(1) + "," + (100 - s[series] / top * 96 - 2).toFixed(1));
    const line = document.querySelector("#chart [data-series=" + series + "]");
    line.setAttribute("points", points.join(" "));
    const values = state.samples.map((s) => s[series]);
    const item = document.querySelector("#legend [data-series=" + series + "]");
    item.querySelector("b").textContent = rate(values[values.length - 1]);
    item.dataset.peak = Math.max(...values);
  }
  $("chart-scale").textContent = "last two minutes; top of the chart " + rate(top) + "/s";
}

function restart() {
  if (state.abort) { const old = state.abort; state.abort = null; old.abort(); }
  state.nodes = new Map(); state.revision = null; state.lostAt = null; state.denied = null; state.lastStats = null; state.samples = [];
  render();
  watch(); stats();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  if (state.token) sessionStorage.setItem("muster-token", state.token); else sessionStorage.removeItem("muster-token");
  restart();
});
$("filter").addEventListener("input", () => go({ q: $("filter").value.trim() }, false));
$("status-filter").addEventListener("change", () => go({ status: $("status-filter").value }, false));
window.addEventListener("hashchange", () => { readLocation(); render(); });
window.addEventListener("popstate", () => { readLocation(); render(); });
window.addEventListener("resize", hints);
setInterval(tick, 1000);
setInterval(stats, 2000);
readLocation();
render();
watch();
stats();
setTimeout(beats, 2000);
