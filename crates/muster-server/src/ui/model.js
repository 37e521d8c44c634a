"use strict";
const STATUSES = ["UP", "DOWN", "STARTING", "STOPPING"];
// Sorting by status goes from serving to not serving.
const RANK = { UP: 0, STARTING: 1, STOPPING: 2, DOWN: 3 };
const state = {
  nodes: new Map(), revision: null, token: sessionStorage.getItem("muster-token") || "", abort: null,
  live: false, lostAt: null, denied: null, samples: [], lastStats: null,
};
// What the page shows, read from and written to the URL (#/services?service=…&node=…&q=…&status=…&sort-…=…).
const view = { name: "services", service: null, node: null, q: "", status: "", sort: {} };
const DEFAULT_SORT = { services: "name:asc", instances: "node:asc", nodes: "node:asc" };
const $ = (id) => document.getElementById(id);
$("token").value = state.token;

function headers(extra) {
  const h = Object.assign({ "accept": "application/json" }, extra || {});
  if (state.token) h["authorization"] = "Bearer " + state.token;
  return h;
}
function text(tag, value, cls) { const e = document.createElement(tag); e.textContent = value; if (cls) e.className = cls; return e; }
function pad(n) { return String(n).padStart(2, "0"); }
// A local date and time, unambiguous: 2026-12-07 14:03:12.
function stamp(ms) {
  const d = new Date(ms);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}
function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}
function ago(ms) { return span((Date.now() - ms) / 1000) + " ago"; }
// An element showing the age of `ms`, kept current by the once-a-second tick (no request).
function age(tag, ms, cls) {
  const e = text(tag, ago(ms), cls);
  e.dataset.since = ms;
  e.title = stamp(ms);
  return e;
}
function showError(message) { $("error").textContent = message || ""; }
function checkOf(node) {
  const m = node.metadata || {};
  if (!m["check.type"]) return null;
  return { type: m["check.type"], output: m["check.output"], since: m["check.since"] ? Number(m["check.since"]) : null,
           target: m["check.target"] || (m["check.type"] === "http" ? node.address + (m["check.path"] || m.health || "/health") : node.address),
           interval: m["check.interval-ms"], timeout: m["check.timeout-ms"], failures: m["check.failures"], successes: m["check.successes"] };
}

// ----- the URL: deep links to a view, a service, a node, the filters and the sort -----
function readLocation() {
  const hash = location.hash.replace(/^#/, "");
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  view.name = path === "/nodes" ? "nodes" : "services";
  view.service = params.get("service");
  view.node = params.get("node");
  view.q = params.get("q") || "";
  view.status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  view.sort = {};
  for (const table of Object.keys(DEFAULT_SORT)) {
    const value = params.get("sort-" + table);
    if (value && /^[a-z]+:(asc|desc)$/.test(value)) view.sort[table] = value;
  }
  $("filter").value = view.q;
  $("status-filter").value = view.status;
}
function hrefFor(changes) {
  const next = Object.assign({}, view, changes || {});
  const params = new URLSearchParams();
  if (next.service) params.set("service", next.service);
  if (next.node) params.set("node", next.node);
  if (next.q) params.set("q", next.q);
  if (next.status) params.set("status", next.status);
  for (const [table, value] of Object.entries(next.sort)) if (value !== DEFAULT_SORT[table]) params.set("sort-" + table, value);
  const query = params.toString().replace(/%3A/g, ":");
  return "#/" + next.name + (query ? "?" + query : "");
}
function go(changes, push) {
  Object.assign(view, changes);
  const href = hrefFor();
  if (href !== location.hash) history[push ? "pushState" : "replaceState"](null, "", href);
  render();
}
function link(label, changes) {
  const a = text("a", label);
  a.href = hrefFor(changes);
  return a;
}

// ----- the live model: every active node, kept by the watch stream -----
function apply(name, data) {
  if (name === "resync") {
    state.nodes = new Map(data.nodes.map((n) => [n.nodeId, n]));
    state.revision = data.revision;
    addEvent(data.timestamp, null, "loaded " + data.nodes.length + " node" + (data.nodes.length === 1 ? "" : "s"));
  } else if (name === "registered" || name === "updated") {
    const before = state.nodes.get(data.node.nodeId);
    state.nodes.set(data.node.nodeId, data.node); state.revision = data.revision;
    addEvent(data.timestamp, data.node.nodeId, name === "registered" ? registeredText(data.node) : updatedText(before, data.node));
  } else if (name === "deregistered") {
    state.nodes.delete(data.node.nodeId); state.revision = data.revision;
    addEvent(data.timestamp, data.node.nodeId, goneText(data.reason, data.node));
  } else { return; }
  render();
}

function servicesText(node) {
  return node.services.map((s) => s.name + (s.version ? " " + s.version : "")).join(", ") || "no services";
}
function registeredText(node) {
  return "registered at " + node.address + " (" + servicesText(node) + "), " + node.status;
}
function updatedText(before, node) {
  const changes = [];
  if (before && before.status !== node.status) changes.push(before.status + " → " + node.status);
  if (before && before.address !== node.address) changes.push("moved to " + node.address);
  if (before && servicesText(before) !== servicesText(node)) changes.push("now provides " + servicesText(node));
  const check = checkOf(node);
  if (check && check.output && node.status === "DOWN") changes.push("check failing: " + check.output);
  if (!changes.length) changes.push(before ? "metadata changed" : "now " + node.status);
  return changes.join("; ");
}
function goneText(reason, node) {
  if (reason === "expired") {
    const ttl = node.ttlMs ? " within its " + (node.ttlMs / 1000) + " s TTL" : "";
    return "expired: no heartbeat" + ttl;
  }
  if (reason === "graceful") return "left (deregistered itself)";
  if (reason === "evicted") return "removed by an operator";
  return "gone (missed while disconnected)";
}
function addEvent(timestamp, nodeId, detail) {
  const ms = timestamp || Date.now();
  const li = document.createElement("li");
  const time = text("time", stamp(ms));
  time.dateTime = new Date(ms).toISOString();
  li.append(time);
  if (nodeId) { li.append(link(nodeId, { node: nodeId }), " "); li.dataset.node = nodeId; }
  li.append(detail);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

// ----- filters and sorting -----
function nodeMatches(node) {
  if (view.status && node.status !== view.status) return false;
  if (!view.q) return true;
  const q = view.q.toLowerCase();
  return node.nodeId.toLowerCase().includes(q) || node.address.toLowerCase().includes(q)
    || node.services.some((s) => s.name.toLowerCase().includes(q) || (s.version || "").toLowerCase().includes(q));
}
function instanceMatches(node, service) {
  if (view.status && node.status !== view.status) return false;
  if (!view.q) return true;
  const q = view.q.toLowerCase();
  return service.name.toLowerCase().includes(q) || (service.version || "").toLowerCase().includes(q)
    || node.nodeId.toLowerCase().includes(q) || node.address.toLowerCase().includes(q);
}
function compare(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}
// Renders `rows` into the table `id` with sortable headers for `columns`
// ({ key, label, cls, value(row) for sorting, cell(row) → element }).
function table(id, columns, rows, rowAttrs) {
  const [key, dir] = (view.sort[id] || DEFAULT_SORT[id]).split(":");
  const column = columns.find((c) => c.key === key) || columns[0];
  const sign = dir === "desc" ? -1 : 1;
  rows.sort((a, b) => sign * compare(column.value(a), column.value(b)) || compare(columns[0].value(a), columns[0].value(b)));
  const head = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    if (c.cls) th.className = c.cls;
    th.dataset.key = c.key;
    th.setAttribute("aria-sort", c === column ? (sign > 0 ? "ascending" : "descending") : "none");
    const button = text("button", c.label);
    button.type = "button";
    button.addEventListener("click", () => {
      const next = c === column && sign > 0 ? "desc" : "asc";
      go({ sort: Object.assign({}, view.sort, { [id]: c.key + ":" + next }) }, false);
    });
    th.append(button);
    head.append(th);
  }
  $(id).tHead.replaceChildren(head);
  const body = $(id).tBodies[0];
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    rowAttrs(tr, row);
    for (const c of columns) {
      const td = c.cell(row);
      if (c.cls) td.classList.add(...c.cls.split(" "));
      tr.append(td);
    }
    body.append(tr);
  }
}
function statusCell(status) { return text("td", status, status); }
function checkCell(node) {
  const check = checkOf(node);
  if (!check) return text("td", "—", "muted");
  const failing = node.status === "DOWN" && check.output;
  const td = text("td", check.type + (failing ? " failing" : " passing"), failing ? "DOWN" : "UP");
  if (failing) td.title = check.output;
  return td;
}
