// mfe dashboard: plain JS, no build step. The server (cli/src/dashboard/) serves this file.
"use strict";

const $ = (s, el = document) => el.querySelector(s);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k instanceof Node ? k : String(k));
  return e;
};
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;
let activeTab = "resources";

async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: "same-origin", headers: { "content-type": "application/json" }, ...opts });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 409 && body && body.error && body.error.code === "confirmation_required") {
    return { needsConfirm: body.error.message, preview: body.preview };
  }
  if (!r.ok) throw new Error(body && body.error ? body.error.message : `HTTP ${r.status}`);
  return body;
}

function toast(text, bad) {
  const t = $("#toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.add("hidden"), 6000);
}

function askConfirm(text) {
  return new Promise((resolve) => {
    const d = $("#confirm");
    $("#confirm-text").textContent = text;
    d.onclose = () => resolve(d.returnValue === "ok");
    d.showModal();
  });
}

// POST without confirm: the server answers what it would do; after the operator confirms, again with confirm.
async function confirmed(path, body, done) {
  try {
    const first = await api(path, { method: "POST", body: JSON.stringify(body) });
    if (!first.needsConfirm) { done && done(first); return; }
    const question = first.needsConfirm.replace(/ — send again with confirm$/, "");
    if (!(await askConfirm(question + "?"))) { toast("cancelled: nothing done"); return; }
    toast("working…");
    const r = await api(path, { method: "POST", body: JSON.stringify({ ...body, confirm: true }) });
    done && done(r);
  } catch (e) { toast(e.message, true); }
}

// ---- tabs -------------------------------------------------------------------------------
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => showTab(b.dataset.tab));
}
function showTab(name) {
  activeTab = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === name);
  refreshers[name] && refreshers[name]();
}
function every(ms, tab, fn) {
  setInterval(() => { if (document.visibilityState === "visible" && (tab === null || activeTab === tab)) fn(); }, ms);
}

// ---- resources --------------------------------------------------------------------------
let resourceNames = [];
async function loadResources() {
  try {
    const r = await api("/api/resources");
    $("#summary").textContent = `${r.ready}/${r.total} ready · ${r.runtime} runtime`;
    $("#res-info").textContent = `state dir ${r.stateDir}`;
    const tb = $("#res-table tbody");
    tb.replaceChildren();
    resourceNames = r.resources.filter((x) => x.log).map((x) => x.name);
    fillLogSelect();
    for (const x of r.resources) {
      const detail = el("td", {}, x.detail);
      if (x.why) detail.append(el("div", { class: "why" }, "why: " + x.why));
      if (x.log_tail && x.log_tail.length) {
        const det = el("details", {}, el("summary", {}, `log tail (${x.log})`), el("pre", {}, x.log_tail.join("\n")));
        detail.append(det);
      }
      const acts = el("td");
      for (const a of x.actions) {
        acts.append(el("button", { class: "small" + (a === "reset" ? " danger" : ""), onclick: () => runAction(a, x.name) }, a), " ");
      }
      const state = el("span", { class: "state " + (x.state === "skipped" ? "warn" : x.healthy ? "ok" : "bad") }, x.state);
      const row = el("tr", { "data-name": x.name, "data-healthy": String(x.healthy) },
        el("td", {}, x.name), el("td", { class: "muted" }, x.kind), el("td", {}, state),
        el("td", {}, (x.ports || []).join(", ")), detail, acts);
      tb.append(row);
    }
  } catch (e) { $("#summary").textContent = "resources: " + e.message; }
}
function runAction(action, target) {
  confirmed("/api/actions", { action, target }, (r) => { toast(`${action} ${target}: done ${r.detail || ""}`); loadResources(); });
}
$("#res-refresh").addEventListener("click", loadResources);
document.querySelector('[data-action="migrate"]').addEventListener("click", () => runAction("migrate", "all"));

// ---- events -----------------------------------------------------------------------------
let source = null, paused = false, pending = [], shownRows = 0;
const MAX_ROWS = 300;
function startTail() {
  if (source) source.close();
  const patterns = $("#ev-patterns").value.trim();
  source = new EventSource("/api/events/stream" + (patterns ? "?type=" + encodeURIComponent(patterns) : ""));
  source.addEventListener("ready", (m) => {
    const r = JSON.parse(m.data);
    $("#ev-stats").textContent = `tailing ${r.patterns.join(" ")} on ${r.exchange}`;
  });
  source.addEventListener("event", (m) => { if (!paused) pending.push(JSON.parse(m.data)); });
  source.addEventListener("stats", (m) => {
    const s = JSON.parse(m.data);
    $("#ev-stats").textContent = `${s.seen}/s seen · ${s.shown}/s shown · ${s.total_seen} total`;
    const n = $("#ev-sampled");
    n.classList.toggle("hidden", !s.sampled);
    n.textContent = `sampling: ${s.seen} events in the last second, ${s.shown} shown (at most 200/s reach this page)`;
  });
  source.addEventListener("failed", (m) => { toast("tail: " + JSON.parse(m.data).message, true); });
  source.onerror = () => { $("#ev-stats").textContent = "tail disconnected, retrying…"; };
}
function flushEvents() {
  if (pending.length) {
    const tb = $("#ev-table tbody");
    const batch = pending.splice(0, pending.length).slice(-MAX_ROWS);
    const frag = document.createDocumentFragment();
    for (const e of batch) {
      const env = e.envelope || {};
      const corr = env.correlationId ? el("a", { class: "corr", onclick: (ev) => { ev.stopPropagation(); filterLogs(env.correlationId); } }, env.correlationId) : "";
      const trace = e.traceId ? el("a", { class: "trace", onclick: (ev) => { ev.stopPropagation(); openTrace(e.traceId); } }, e.traceId.slice(0, 8)) : "";
      const row = el("tr", { "data-type": env.type || e.routingKey, "data-id": env.id || "", "data-trace": e.traceId || "" },
        el("td", { title: env.timestamp || "" }, (env.timestamp || "").slice(11, 23)), el("td", {}, env.type || e.routingKey),
        el("td", {}, env.source || ""), el("td", {}, corr), el("td", {}, trace), el("td", { class: "muted" }, env.id || "(not an envelope)"));
      row.addEventListener("click", () => { const p = $("#ev-payload"); p.classList.remove("hidden"); p.textContent = JSON.stringify(e.envelope || e.raw, null, 2); });
      frag.prepend(row);
    }
    tb.prepend(frag);
    shownRows += batch.length;
    while (tb.rows.length > MAX_ROWS) tb.deleteRow(-1);
  }
  requestAnimationFrame(() => setTimeout(flushEvents, 250));
}
$("#ev-start").addEventListener("click", startTail);
$("#ev-pause").addEventListener("click", (b) => { paused = !paused; b.target.textContent = paused ? "Resume" : "Pause"; });
$("#ev-clear").addEventListener("click", () => { $("#ev-table tbody").replaceChildren(); $("#ev-payload").classList.add("hidden"); });

async function loadQueues() {
  try {
    const r = await api("/api/events/queues");
    const tb = $("#q-table tbody");
    tb.replaceChildren(...r.queues.map((q) => el("tr", {}, el("td", {}, q.name), el("td", {}, q.messages ?? ""),
      el("td", {}, q.messages_ready ?? ""), el("td", {}, q.messages_unacknowledged ?? ""),
      el("td", { class: q.consumers ? "" : "warn" }, q.consumers ?? ""))));
  } catch (e) { $("#q-table tbody").replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "bad" }, e.message))); }
}
async function loadDlq() {
  try {
    const r = await api("/api/events/dlq");
    $("#dlq-info").textContent = `${r.total} in ${r.queue}` + (r.truncated ? ` (${r.deadLetters.length} shown)` : "");
    const tb = $("#dlq-table tbody");
    tb.replaceChildren(...r.deadLetters.map((d) => el("tr", { "data-id": d.id },
      el("td", { title: d.id }, d.id.slice(0, 8)), el("td", {}, d.eventType || d.type || ""), el("td", {}, d.consumer),
      el("td", { title: d.reason }, (d.reason || "").slice(0, 60)), el("td", {}, d.attempts),
      el("td", {}, el("button", { class: "small", onclick: () => dlq("replay", { id: d.id }) }, "replay"), " ",
        el("button", { class: "small danger", onclick: () => dlq("purge", { id: d.id }) }, "purge")))));
  } catch (e) { $("#dlq-info").textContent = e.message; }
}
function dlq(op, sel) {
  confirmed("/api/events/dlq/" + op, sel, (r) => {
    toast(op === "replay" ? `replayed ${r.replayed.length}, failed ${r.failed.length}` : `purged ${r.purged}`);
    loadDlq(); loadQueues();
  });
}
$("#q-refresh").addEventListener("click", loadQueues);
$("#dlq-refresh").addEventListener("click", loadDlq);
$("#dlq-replay-all").addEventListener("click", () => dlq("replay", { all: true }));
$("#dlq-purge-all").addEventListener("click", () => dlq("purge", { all: true }));

// ---- traces -----------------------------------------------------------------------------
const SERVICE_COLORS = {};
function serviceColor(name) {
  if (!SERVICE_COLORS[name]) SERVICE_COLORS[name] = COLORS[Object.keys(SERVICE_COLORS).length % COLORS.length];
  return SERVICE_COLORS[name];
}
let openTraceId = null;
async function loadTraces() {
  try {
    const q = new URLSearchParams();
    const svc = $("#tr-service").value, text = $("#tr-q").value.trim();
    if (svc) q.set("service", svc);
    if (text) q.set("q", text);
    const r = await api("/api/traces?" + q);
    $("#tr-info").textContent = `${r.stored} traces kept (newest ${r.maxTraces}) · ${r.received} spans received` +
      (r.dropped ? ` · ${r.dropped} dropped` : "") + (r.stored ? "" : " — services export here when OTEL_EXPORTER_OTLP_ENDPOINT is " + location.origin);
    const known = new Set([...$("#tr-service").options].map((o) => o.value));
    for (const t of r.traces) for (const s of t.services) if (!known.has(s)) { known.add(s); $("#tr-service").append(el("option", { value: s }, s)); }
    $("#tr-table tbody").replaceChildren(...r.traces.map((t) => el("tr", { "data-trace": t.traceId, class: t.traceId === openTraceId ? "open" : "", onclick: () => openTrace(t.traceId) },
      el("td", { title: t.traceId }, new Date(t.startUnixNano / 1e6).toISOString().slice(11, 23)),
      el("td", { class: t.errors ? "bad" : "" }, t.root || ""), el("td", {}, t.services.join(", ")), el("td", {}, t.spans), el("td", {}, t.durationMs))));
  } catch (e) { $("#tr-info").textContent = e.message; }
}
async function openTrace(id) {
  openTraceId = id;
  if (activeTab !== "traces") showTab("traces");
  try {
    const r = await api("/api/traces/" + encodeURIComponent(id));
    $("#wf-title").textContent = `trace ${r.traceId} · ${r.spans.length} spans · ${r.durationMs} ms`;
    const total = Math.max(r.durationMs, 0.001);
    $("#waterfall").replaceChildren(...r.spans.map((s) => {
      const bar = el("div", { class: "wf-bar" + (s.error != null ? " err" : "") });
      bar.style.left = (100 * s.offsetMs / total) + "%";
      bar.style.width = Math.max(0.3, 100 * s.durationMs / total) + "%";
      bar.style.background = serviceColor(s.service);
      const label = el("div", { class: "wf-label" }, el("span", { class: "wf-svc", style: "color:" + serviceColor(s.service) }, s.service), " ", s.name,
        s.parentMissing ? el("span", { class: "muted", title: "its parent span was not received" }, " ↑?") : "");
      label.style.paddingLeft = (s.depth * 14) + "px";
      return el("div", { class: "wf-row", "data-service": s.service, "data-kind": s.kind, "data-span": s.spanId, onclick: () => {
        const p = $("#wf-span"); p.classList.remove("hidden");
        p.textContent = JSON.stringify({ service: s.service, name: s.name, kind: s.kind, spanId: s.spanId, parentSpanId: s.parentSpanId,
          startMs: s.offsetMs, durationMs: s.durationMs, error: s.error, attributes: Object.fromEntries(s.attributes) }, null, 2);
      } }, label, el("div", { class: "wf-track" }, bar), el("div", { class: "wf-ms muted" }, s.durationMs + " ms"));
    }));
  } catch (e) {
    $("#wf-title").textContent = e.message;
    $("#waterfall").replaceChildren();
  }
  loadTraces();
}
$("#tr-refresh").addEventListener("click", loadTraces);
$("#tr-q").addEventListener("change", loadTraces);
$("#tr-service").addEventListener("change", loadTraces);

// ---- charts -----------------------------------------------------------------------------
const COLORS = ["#58a6ff", "#f85149", "#3fb950", "#d29922", "#bc8cff"];
function drawChart(canvas, series, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 90;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const max = Math.max(1e-9, ...all) * 1.15;
  g.strokeStyle = "#26323d"; g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
  g.fillStyle = "#8796a3"; g.font = "10px sans-serif";
  g.fillText(all.length ? `${Number(max.toPrecision(3))} ${unit}` : "no data yet", 2, 10);
  series.forEach((s, i) => {
    const n = s.values.length;
    if (n < 2) return;
    g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 1.5; g.beginPath();
    let started = false;
    s.values.forEach((v, j) => {
      if (v == null) { started = false; return; }
      const x = (j / (n - 1)) * w, y = h - (v / max) * (h - 14);
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    });
    g.stroke();
  });
}
function chartBox(id, title, legend) {
  let box = document.getElementById(id);
  if (!box) {
    box = el("div", { class: "chart", id }, el("h3", {}, title), el("canvas"), el("div", { class: "legend" }));
    $("#m-charts").append(box);
  }
  $(".legend", box).replaceChildren(...legend.map((l, i) => el("span", { class: "" }, (i ? " · " : "") + l)));
  return $("canvas", box);
}
async function loadMetrics() {
  try {
    const r = await api("/api/metrics");
    const rows = [];
    for (const t of r.targets) {
      const pts = t.points;
      const last = pts[pts.length - 1] || {};
      const state = t.up ? "" : ` — down: ${t.error}`;
      drawChart(chartBox("c-" + t.name, `${t.name}${state}`, [`req/s ${last.rps ?? "-"}`, `5xx/s ${last.errors_ps ?? "-"}`]),
        [{ values: pts.map((p) => p.rps) }, { values: pts.map((p) => p.errors_ps) }], "req/s");
      drawChart(chartBox("p-" + t.name, `${t.name} p95`, [`p95 ${last.p95_ms ?? "-"} ms`]), [{ values: pts.map((p) => p.p95_ms) }], "ms");
      if (pts.some((p) => p.published_ps || p.consumed_ps)) {
        drawChart(chartBox("e-" + t.name, `${t.name} events`, [`published/s ${last.published_ps}`, `consumed/s ${last.consumed_ps}`]),
          [{ values: pts.map((p) => p.published_ps) }, { values: pts.map((p) => p.consumed_ps) }], "ev/s");
      }
      if (t.name === "gateway") {
        drawChart(chartBox("ws-gateway", "gateway WebSocket connections", [`open ${last.ws_connections ?? "-"}`]),
          [{ values: pts.map((p) => p.ws_connections) }], "conns");
      }
      for (const rt of t.routes) rows.push(el("tr", {}, el("td", {}, t.name), el("td", {}, rt.route), el("td", {}, rt.rps),
        el("td", { class: rt.errors_ps ? "bad" : "" }, rt.errors_ps), el("td", {}, rt.p95_ms ?? "-"), el("td", {}, rt.total)));
    }
    $("#m-routes tbody").replaceChildren(...rows);
  } catch (e) { $("#m-info").textContent = e.message; }
}

// ---- migration --------------------------------------------------------------------------
const lagHistory = {};
async function loadMigration() {
  try {
    const r = await api("/api/migration");
    const tb = $("#mig-table tbody");
    if (r.error) { $("#mig-info").textContent = r.error; tb.replaceChildren(); return; }
    $("#mig-info").textContent = r.active ? "online sync (refreshed every 2 s)" : "no sync recorded — `mfe migrate sync start` begins one";
    const checks = r.report.checks;
    tb.replaceChildren(...checks.map((c) => {
      const m = c.metrics || {};
      const lag = m.lag_seconds ?? m.lag_s ?? null;
      (lagHistory[c.name] = lagHistory[c.name] || []).push(lag);
      if (lagHistory[c.name].length > 90) lagHistory[c.name].shift();
      return el("tr", {}, el("td", {}, c.name), el("td", { class: c.passed ? "ok" : "bad" }, c.passed ? "yes" : "no"),
        el("td", {}, c.detail), el("td", {}, m.lag_bytes ?? ""), el("td", {}, lag ?? ""), el("td", {}, m.rows_applied ?? m.applied ?? ""));
    }));
    if (r.active) drawChart($("#mig-chart"), Object.values(lagHistory).map((values) => ({ values })), "s lag");
  } catch (e) { $("#mig-info").textContent = e.message; }
}

// ---- logs -------------------------------------------------------------------------------
function fillLogSelect() {
  const s = $("#log-comp");
  const cur = s.value;
  if (s.options.length === resourceNames.length) return;
  s.replaceChildren(...resourceNames.map((n) => el("option", { value: n }, n)));
  if (resourceNames.includes(cur)) s.value = cur;
}
function filterLogs(id) { $("#log-filter").value = id; showTab("logs"); }
async function loadLogs() {
  const comp = $("#log-comp").value;
  if (!comp) return;
  try {
    const q = new URLSearchParams({ component: comp, lines: "300" });
    const f = $("#log-filter").value.trim();
    if (f) q.set("filter", f);
    const r = await api("/api/logs?" + q);
    const pre = $("#log-lines");
    pre.replaceChildren();
    if (!r.exists) { pre.textContent = `no log yet at ${r.path}`; return; }
    for (const line of r.lines) {
      let last = 0;
      for (const m of line.matchAll(UUID)) {
        pre.append(line.slice(last, m.index));
        const id = m[0];
        pre.append(el("a", { class: "corr", onclick: () => { $("#log-filter").value = id; loadLogs(); } }, id));
        last = m.index + id.length;
      }
      pre.append(line.slice(last) + "\n");
    }
    pre.scrollTop = pre.scrollHeight;
  } catch (e) { $("#log-lines").textContent = e.message; }
}
$("#log-refresh").addEventListener("click", loadLogs);
$("#log-comp").addEventListener("change", loadLogs);

// ---- start ------------------------------------------------------------------------------
const refreshers = { resources: loadResources, events: () => { if (!source) startTail(); loadQueues(); loadDlq(); },
  traces: loadTraces, metrics: loadMetrics, migration: loadMigration, logs: loadLogs };
every(5000, "resources", loadResources);
every(5000, "events", loadQueues);
every(10000, "events", loadDlq);
every(2000, "metrics", loadMetrics);
every(3000, "traces", () => (openTraceId ? openTrace(openTraceId) : loadTraces())); // openTrace reloads the list too
every(2000, "migration", loadMigration);
every(2000, "logs", () => { if ($("#log-follow").checked) loadLogs(); });
const initial = (location.hash || "#resources").slice(1);
loadResources().then(() => showTab(refreshers[initial] ? initial : "resources"));
flushEvents();
