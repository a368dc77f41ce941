"use strict";
const $ = (id) => document.getElementById(id);
const INTERVAL = 2000;
let operator = null;

function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
function urlCell(url) {  // may break after the scheme and before the port or path, never inside a name
  const td = cell("", "url");
  for (const part of String(url || "").split(/(?<=:\/\/)|(?=:\d)|(?<=\d)(?=\/)/)) td.append(part, document.createElement("wbr"));
  td.lastChild?.remove();
  return td;
}
function pillOf(kind, text) { const s = document.createElement("span"); s.className = "pill " + kind; s.textContent = text; return s; }
function pill(kind, text) { const td = cell(""); td.append(pillOf(kind, text)); return td; }
const fmt = (v, digits = 1) => v == null ? "–" : Number(v).toFixed(digits);

function spark(samples) {  // two polylines, each scaled to its own maximum
  const W = 160, H = 32, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg"); svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H); svg.setAttribute("preserveAspectRatio", "none");  // CSS sizes it
  const line = (key, color) => {
    const values = samples.map((s) => s[key] || 0), max = Math.max(1, ...values);
    const step = samples.length > 1 ? W / (samples.length - 1) : W;
    const p = document.createElementNS(NS, "polyline");
    p.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (H - 2 - (v / max) * (H - 4)).toFixed(1)).join(" "));
    p.setAttribute("fill", "none"); p.setAttribute("stroke", color); p.setAttribute("stroke-width", "1.5");
    svg.append(p);
  };
  line("connections", "#16a34a"); line("msgs_per_s", "#2563eb");
  return svg;
}

function stateOf(n) {
  const st = n.stats || {};
  if (!n.alive) return ["bad", "DEAD", "dead"];
  if (!n.stats || st.status === "unreachable" || !st.checks) return ["bad", "unreachable", "dead"];
  if (st.draining) return ["warn", "draining", "draining"];
  if (st.status !== "ok") return ["bad", "degraded", "dead"];
  return ["ok", "alive", ""];
}

function nodeRow(n, now) {
  const st = n.stats || {}, samples = st.samples || [], last = samples[samples.length - 1] || {};
  const [kind, label, rowClass] = stateOf(n);
  const tr = document.createElement("tr"); tr.className = rowClass; tr.dataset.node = n.node;
  const checks = cell("", "checks"), pills = document.createElement("div");  // pills wrap in a narrow column
  pills.className = "pills";
  for (const [name, value] of Object.entries(st.checks || {})) {
    const p = pillOf(value === "ok" ? "ok" : "bad", name); p.title = (st.problems || {})[name] || value; pills.append(p);
  }
  if (st.checks) checks.append(pills); else checks.textContent = st.error ? "no answer" : "–";
  const history = cell(""); if (samples.length) history.append(spark(samples));
  tr.append(cell(n.node), cell(n.role), urlCell(n.url),
    cell(n.heartbeat_age_s.toFixed(1) + " s ago", "num" + (n.heartbeat_age_s > 5 ? " stale" : "")),
    cell(st.connections != null ? st.connections : n.connections, "num"), cell(fmt(last.msgs_per_s), "num"),
    cell(st.forward_queue != null ? st.forward_queue : "–", "num"),
    cell(last.p50_ms == null ? "–" : fmt(last.p50_ms) + " / " + fmt(last.p99_ms) + " ms", "num"),
    checks, history, pill(kind, label));
  const op = cell("", "opcol"); op.hidden = !operator;
  if (operator && n.alive && !st.draining && st.checks) {
    const b = document.createElement("button"); b.className = "danger"; b.textContent = "drain";
    b.onclick = () => { if (confirm("Drain " + n.node + "? Its clients are disconnected and move to other nodes.")) act("/admin/drain", {node: n.node}); };
    op.append(b);
  }
  tr.append(op);
  return tr;
}

function masterLine(m, now) {
  if (!m || !m.node) return "active master: none (no master ever took the lease)";
  const lapsed = m.alive ? "" : m.standbys.length ? " (its lease LAPSED: a standby takes over)"
    : " (its lease LAPSED and no standby is alive: start a master-capable node)";
  const last = m.since ? new Date(m.since).toLocaleString() + " (" + ((now - m.since) / 1000).toFixed(1) + " s ago)" : "-";
  return "active master: " + m.node + lapsed + ", epoch " + m.epoch + " · standbys: " + (m.standbys.join(", ") || "none") +
    " · takeovers: " + m.takeovers + " (the first start included), the last " + last;
}

async function poll() {
  try {
    const r = await fetch("/dashboard.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    setOperator(data.operator, data.trail);
    $("master").textContent = masterLine(data.master, data.now);
    let conn = 0, rate = 0, queue = 0, alive = 0;
    const rows = data.nodes.map((n) => {
      const st = n.stats || {}, samples = st.samples || [], last = samples[samples.length - 1] || {};
      if (stateOf(n)[0] !== "bad") { alive++; conn += st.connections != null ? st.connections : n.connections; rate += last.msgs_per_s || 0; queue += st.forward_queue || 0; }
      return nodeRow(n, data.now);
    });
    if (!rows.length) rows.push(Object.assign(document.createElement("tr"), {innerHTML: "<td colspan=12>no nodes registered</td>"}));
    $("nodes").replaceChildren(...rows);
    $("totConn").textContent = conn; $("totRate").textContent = rate.toFixed(1); $("totQueue").textContent = queue;
    $("totAlive").textContent = alive + " / " + data.nodes.length + " serving";
    $("error").textContent = "";
    $("updated").textContent = "updated " + new Date(data.now).toLocaleTimeString() + " (served by " + data.self + ")";
  } catch (e) {
    $("error").textContent = "Cannot load the cluster's state from this node: " + e.message;
    $("updated").textContent = "stale since " + new Date().toLocaleTimeString();
  }
}

function setOperator(who, trail) {
  operator = who;
  $("login").hidden = !!who; $("actions").hidden = !who;
  document.querySelectorAll(".opcol").forEach((e) => { e.hidden = !who; });
  if (!who) return;
  $("who").textContent = who;
  $("trail").replaceChildren(...trail.slice().reverse().map((e) => {
    const tr = document.createElement("tr");
    tr.append(cell(new Date(e.t).toLocaleTimeString()), cell(e.who), cell(e.remote), cell(e.action), cell(e.target), cell(e.result));
    return tr;
  }));
}

function say(text, ok) { $("opmsg").textContent = text; $("opmsg").className = ok ? "done" : "failed"; }
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  let data = {}; try { data = await r.json(); } catch { /* no body */ }
  return [r.status, data];
}
async function act(path, body) {
  try {
    const [status, data] = await post(path, body);
    if (status === 401) { say("Please log in as an operator first.", false); setOperator(null, []); return; }
    say(status < 300 ? (data.result || (data.closed != null ? data.closed + " session(s) closed on " + data.node : "done")) : (data.error || data.result || "HTTP " + status), status < 300);
  } catch (e) { say("The node did not answer: " + e.message, false); }
  poll();
}
$("login").onsubmit = async (e) => {
  e.preventDefault();
  const d = new FormData(e.target);
  const [status, data] = await post("/login", {name: d.get("name"), secret: d.get("secret")});
  if (status === 200) { say("Logged in.", true); e.target.reset(); }
  else say(status === 429 && data.error ? data.error.charAt(0).toUpperCase() + data.error.slice(1) + "." : "Wrong cluster secret.", false);
  poll();
};
$("kick").onsubmit = (e) => { e.preventDefault(); act("/admin/kick", {user: new FormData(e.target).get("user")}); e.target.reset(); };
$("logout").onclick = async () => { await post("/logout", {}); say("Logged out.", true); poll(); };

poll();
setInterval(poll, INTERVAL);
