"use strict";
// The protocol's error kinds and close codes go to the console; people see these sentences.
const ERRORS = {
  "bad-frame": "The app sent something the server could not read. Please reload the page.",
  "unknown-code": "The server does not understand this app's request. Please reload the page.",
  "invalid": "That was not accepted. Please check what you entered.",
  "unauthorized": "Wrong username or password.",
  "forbidden": "You are not allowed to do that.",
  "not-found": "That person, group or message does not exist (any more).",
  "not-member": "You are not a member of this group.",
  "conflict": "That username is taken. Please choose another one.",
  "locked": "Too many failed sign-ins. Please wait 15 minutes and try again.",
  "expired": "That message is too old to be recalled.",  // the window is the cluster's vim.message.recall-window
  "too-large": "That message is too long.",
  "rate-limited": "You are sending too fast. Please slow down a little.",
  "unavailable": "The service is having trouble right now. Nothing was sent; please try again in a moment.",
  "internal": "Something went wrong on the server. Please try again.",
};
const CONTEXT_ERRORS = {  // (rid, kind) where the general sentence would mislead
  "register:invalid": "Usernames are 3 to 32 letters, digits, '_', '.' or '-', and passwords at least 8 characters.",
  "ready:unauthorized": "Your sign-in has expired. Please log in again.",
  "ready:invalid": "Your sign-in has expired. Please log in again.",
  "ready:unavailable": "The service is having trouble right now.",
  "ready:internal": "The server ran into a problem while signing you in.",
  "register:rate-limited": "Too many accounts were made from this network lately. Please try again in 15 minutes.",
  "group:rate-limited": "You have made as many groups as allowed in one hour. Please try again later.",
  "group:forbidden": "You already own as many groups as allowed.",
  "group:not-found": "Someone you picked no longer has an account.",
  "history:forbidden": "You are no longer a member of this group.",
  "history:not-found": "That account no longer exists.",
};
// a message refused for good says why on its bubble ("not sent: too long"), after the banner is gone
const WHY_NOT_SENT = {"too-large": "too long", "not-member": "not a member", "not-found": "no such account", "forbidden": "not allowed"};
const RETRYABLE = new Set(["unavailable", "rate-limited", "internal"]);  // a message refused with these may be resent (same cid)
// close code -> [what people read, reconnect by itself?]
const CLOSES = {
  1000: ["You were disconnected.", false],
  1001: ["The server is restarting.", true],
  1006: ["The connection to the server was lost.", true],
  1008: ["The server refused the connection.", true],
  1009: ["Something too large was sent; the connection was reset.", true],
  1011: ["The server ran into a problem.", true],
  4001: ["You signed in somewhere else, so this window was signed out.", false],
  4002: ["An administrator signed you out.", false],
  4003: ["Signing in took too long.", true],
  4004: ["The connection could not keep up.", true],
  4005: ["This server is going down for maintenance; moving you to another one.", true],
  4006: ["Your account was deleted by an administrator.", false],
};
const $ = (id) => document.getElementById(id);
// Names are put in the page as text only. A name stored before the node refused them
// (docs/protocol.md §2.3) may still hold control, bidi or other invisible format characters:
// they are left out when it is shown, so it cannot reverse or hide the text around it (what
// spellings need stays: the joiners of emoji and of Persian spellings, the Mongolian vowel
// separator, and the tags of a flag such as Scotland's, kept by the first alternative).
const UNSHOWN = /(\u{1F3F4}[\u{E0020}-\u{E007E}]+\u{E007F})|(?![\u200C\u200D\u180E])[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu;
const named = (o) => (typeof o.name === "string" ? {...o, name: o.name.replace(UNSHOWN, (_, flag) => flag || "")} : o);
const Q = new URLSearchParams(location.search);
// A ping every 25 s (`?ping=S`: every S seconds); no frame at all within 10 s of a ping (or of
// opening a connection; `?ping=S` below 10: S seconds) means the connection is dead.
let recallMs = 120000;  // the node's vim.message.recall-window, from ready-ok (older nodes: the default)
const PING_MS = 1000 * (+Q.get("ping") > 0 ? +Q.get("ping") : 25), DEADLINE_MS = Math.min(10000, PING_MS);
const TRIES_PER_NODE = 3;                         // failed attempts on one node before trying another
const S = sessionStorage, L = localStorage;
if (!S.getItem("uuid")) S.setItem("uuid", crypto.randomUUID());
const token = { get: () => S.getItem("token") || L.getItem("token"),
  set: (t, stay) => { S.setItem("token", t); if (stay) L.setItem("token", t); else L.removeItem("token"); },
  clear: () => { S.removeItem("token"); L.removeItem("token"); } };
let ws = null, me = null, myNode = null, clockSkew = 0, pendingCreds = null, stayNext = false;
let stopped = false, attempt = 0, retryTimer = null, lastClose = null, outage = null;  // outage: why we lost the node
let live = false, owner = null;                   // live: ready-ok on this socket; owner: whose state is loaded
let opened = false;                               // the current connection opened (else the server was not reached)
let pingSentAt = 0, openTimer = null, triesHere = 0, knownNodes = [];  // knownNodes: [{node, url, ok}] from /dashboard.json
let users = new Map(), groups = new Map(), depts = [];
const convs = new Map();                          // "type:id" -> {type, id, msgs: Map(key -> msg), more, loaded, unread}
const byId = new Map();                           // server id -> msg (for receipt, recall)
const pendingByCid = new Map();                   // cid -> msg awaiting ack
const peerRead = new Map();                       // friend id -> timestamp they read up to
const sentRead = new Map();                       // conv key -> timestamp of our last read
let toConfirm = [], confirmTimer = null, open = null;

// ---------- connection ----------
function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = cls || ""; }
function send(code, message = {}) {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({code, message})); return true; }
  banner("err", "Not connected: please wait until the connection is back.", null, null, "offline"); return false;
}
function connect(then) {
  clearTimeout(retryTimer); clearTimeout(openTimer); stopped = false; live = false; pingSentAt = 0; opened = false;
  if (ws) detach(ws);
  const url = $("url").value.trim();
  S.setItem("url", url);
  if (!attempt) setStatus("connecting …");
  try { ws = new WebSocket(url); } catch (e) { console.warn("bad url", e); banner("err", "That server address is not valid."); return; }
  const sock = ws;
  openTimer = setTimeout(() => { if (ws === sock && sock.readyState === WebSocket.CONNECTING) drop("the node did not answer"); }, DEADLINE_MS);
  ws.onopen = () => { opened = true; clearTimeout(openTimer); if (!attempt) setStatus("connected (not logged in)"); clearBanner("offline"); then && then(); };
  ws.onmessage = (ev) => { pingSentAt = 0; let f; try { f = JSON.parse(ev.data); } catch { return; } handle(f.code, f.message || {}); };
  ws.onclose = (ev) => onClose(ev.code);
}
function detach(sock) { sock.onopen = sock.onmessage = sock.onclose = null; try { sock.close(); } catch { /* already closed */ } }
function drop(why) {  // a dead or half-open connection: give up on it now, as if it had been lost
  console.info("dropping the connection:", why);
  if (ws) { detach(ws); onClose(1006); }
}
function onClose(code) {
  if (code === 1009) closedByTooLarge(ws);
  ws = null; live = false; pingSentAt = 0; clearTimeout(openTimer);
  contactsAsk.current = false;
  if (owner) renderContacts();  // no presence comes while disconnected: no dot says online until the next contacts
  console.info("websocket closed with code", code);
  const [text, retry] = CLOSES[code] || ["The connection was closed.", true];
  if (stopped) return;                             // logout, other-login, kick: we said why already
  if (!token.get() && !me) {  // not signed in: the next form submit reconnects
    setStatus("disconnected");
    if (!opened) banner("err", "Cannot reach the server at " + $("url").value.trim() + ". Please check the server address, or try again in a moment.");
    return;
  }
  if (code === 4006) { token.clear(); showAuth(); setStatus("account deleted"); banner("warn", text); return; }
  if (!retry) { setStatus("disconnected"); banner("warn", text, "Reconnect", reconnect, "conn"); return; }
  if (!outage || code !== 1006) { outage = text; lastClose = code; }  // failed retries keep the first reason
  scheduleReconnect(outage);
}
// the wait before the next try after `tries` failed ones: 1 s doubling to 30 s, ±25 %
const backoffMs = (tries) => Math.min(30000, 1000 * 2 ** Math.min(tries, 5)) * (0.75 + Math.random() / 2);
function scheduleReconnect(why) {
  const delay = backoffMs(attempt);
  attempt++;
  setStatus("reconnecting… (attempt " + attempt + ")", "reconnecting");
  banner("warn", why + " Reconnecting… next try in " + Math.round(delay / 1000) + " s.", "Try now", reconnect, "conn");
  retryTimer = setTimeout(reconnect, lastClose === 4005 && attempt === 1 ? 0 : delay); retryWaiting = true;
}
// A tab in the background has its timers throttled (Chromium: once a minute after 5 minutes), so
// the next try may come long after the person looks again: coming to the front tries at once.
let retryWaiting = false;
function backInFront() { if (document.visibilityState === "visible" && retryWaiting && !ws) reconnect(); }
document.addEventListener("visibilitychange", backInFront);
async function reconnect() {
  clearTimeout(retryTimer); retryWaiting = false;
  if (lastClose === 4005) await moveToAnotherNode(true);
  else if (triesHere >= TRIES_PER_NODE) await moveToAnotherNode(false);  // this node stays down
  triesHere++;
  connect(() => { if (token.get()) sendReady(); });
}
async function loadNodes() {  // the cluster's nodes, kept for when this page's own node is down
  try {
    const data = await (await fetch("/dashboard.json", {signal: AbortSignal.timeout(5000)})).json();
    // The names the nodes advertise are the ones this browser uses when this page's own node
    // advertises the name the page came from (nodes on hosts of their own); otherwise (compose's
    // service names behind one published host) each node is this page's host at its own port.
    const self = data.nodes.find((n) => n.node === data.self);
    const asAdvertised = !!self && new URL(self.url).hostname === location.hostname;
    knownNodes = data.nodes.map((n) => {
      const u = new URL(n.url); if (!asAdvertised && location.hostname) u.hostname = location.hostname;
      return {node: n.node, url: u.toString(), ok: n.alive && !(n.stats && n.stats.draining)};
    });
    return true;
  } catch (e) { console.warn("cannot list the cluster's nodes", e); return false; }
}
async function moveToAnotherNode(fresh) {
  // after 4005 "node draining": another live node from a fresh /dashboard.json (the last list
  // read if it cannot be fetched); after TRIES_PER_NODE failures: the next node of the last list
  if (fresh) await loadNodes();
  const here = $("url").value.trim(), at = knownNodes.findIndex((n) => n.url === here);
  const ring = [...knownNodes.slice(at + 1), ...knownNodes.slice(0, at + 1)];
  const next = ring.find((n) => n.url !== here && n.ok && (!fresh || n.node !== myNode));
  if (next) { console.info("moving to node", next.node); $("url").value = next.url; }
  triesHere = 0;
}
function sendReady() { send("ready", {token: token.get(), client: "web", uuid: S.getItem("uuid"), rid: "ready"}); }
setInterval(() => {  // beats the idle timeout, and finds out a dead connection
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (!pingSentAt) pingSentAt = Date.now();
  send("ping");
}, PING_MS);
setInterval(() => { if (ws && pingSentAt && Date.now() - pingSentAt > DEADLINE_MS) drop("no answer to a ping"); }, 500);
setInterval(() => {  // recall buttons expire: removed in place (a redraw would undo what the person has selected)
  const now = Date.now() + clockSkew;
  for (const b of document.querySelectorAll("#log button.recall")) if (now - +b.dataset.ts >= recallMs) b.remove();
}, 10000);

// ---------- banners (an error banner goes away with the next success) ----------
function banner(kind, text, action, fn, tag) {
  clearBanner(tag || "error");
  const div = document.createElement("div");
  div.className = "banner " + kind; div.dataset.tag = tag || "error";
  div.innerHTML = "<span></span>"; div.firstChild.textContent = text;
  if (action) { const b = document.createElement("button"); b.textContent = action; b.onclick = fn; div.append(b); }
  const x = document.createElement("button"); x.className = "plain"; x.textContent = "×"; x.title = "dismiss"; x.onclick = () => div.remove(); div.append(x);
  const log = $("log"), atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  $("banners").append(div);
  if (atBottom) log.scrollTop = log.scrollHeight;
}
function clearBanner(tag) { document.querySelectorAll(`#banners [data-tag="${tag}"]`).forEach((d) => d.remove()); }
const SUCCESS = new Set(["register-ok", "login-ok", "ready-ok", "ack", "history", "contacts", "group-ok", "recall"]);

// ---------- frames from the node ----------
function handle(code, m) {
  if (SUCCESS.has(code)) clearBanner("error");
  switch (code) {
    case "register-ok":
      if (pendingCreds) send("login", {...pendingCreds, rid: "login"}); break;
    case "login-ok":
      pendingCreds = null; token.set(m.token, stayNext); sendReady(); break;
    case "ready-ok": onReady(m); break;
    case "sync-done": case "pong": break;
    case "contacts": onContacts(m); break;
    case "presence": onPresence(m); break;
    case "group-ok": onGroup(m); break;
    case "message": onMessage(m); break;
    case "ack": acked(m); break;
    case "receipt": {
      const msg = byId.get(m.id);
      if (msg && msg.state !== "read") { msg.state = "delivered"; if (open && convOf(msg) === open) render(); } break;
    }
    case "read":
      if (m.type === "friend") { peerRead.set(m.by, Math.max(peerRead.get(m.by) || 0, m.timestamp)); if (open && open.id === m.by) render(); }
      break;
    case "recall": {
      const msg = byId.get(m.id); if (!msg) break;
      msg.messageType = "recalled"; msg.content = "";
      if (open && convOf(msg) === open) render(); break;
    }
    case "history": onHistory(m); break;
    case "other-login":
      stopped = true;
      banner("warn", CLOSES[4001][0], "Use it here", takeOver, "conn"); setStatus("signed out (signed in elsewhere)");
      break;
    case "error": onError(m); break;
    default: console.info("frame not handled", code, m);
  }
}
function onReady(m) {
  if (owner !== m.userId) resetUser();  // another person signed in in this tab: nothing of the last one stays
  owner = me = m.userId; myNode = m.nodeId; clockSkew = m.serverTime - Date.now(); live = true;
  if (m.recallWindowMs >= 0) recallMs = m.recallWindowMs;
  attempt = 0; triesHere = 0; lastClose = null; outage = null; stopped = false;
  setStatus("logged in as " + (S.getItem("username") || L.getItem("username") || me) + " on " + m.nodeId);
  $("auth").hidden = true; $("main").hidden = false; $("logout").hidden = false;
  clearBanner("conn"); clearBanner("offline");
  askContacts(true);
  resendPending();  // before history: a resent message already stored is acked before history shows it
  // resync: what changed meanwhile comes with history; a cached conversation may have a gap
  // behind its newest page, so the page replaces what is older (trimStale)
  for (const c of convs.values()) { c.loaded = false; c.stale = true; c.paging = false; }
  if (open) send("history", {chatId: open.id, type: open.type, limit: 30, rid: "history"});
  loadNodes();
}
const frameOf = (msg) => ({cid: msg.cid, chatId: msg.chatId, type: msg.type, messageType: msg.messageType, content: msg.content});
// A message whose frame is larger than the node's vim.websocket.max-frame closes the connection
// (1009) before the node reads it, so it gets no `error too-large`. The largest message sent on
// that connection and not acked is then the one: it shows "not sent" (resending it would only
// close the next connection too), and no frame that large is sent again.
let frameLimit = Infinity;
const frameBytes = (msg) => new TextEncoder().encode(JSON.stringify({code: "message", message: frameOf(msg)})).length;
function sendMessage(msg) {
  const bytes = frameBytes(msg);
  if (bytes >= frameLimit) { tooLarge(msg); return; }
  if (send("message", frameOf(msg))) { msg.sentOn = ws; msg.bytes = bytes; }
}
function tooLarge(msg) {
  msg.state = "failed"; msg.retry = false; msg.why = WHY_NOT_SENT["too-large"]; pendingByCid.delete(msg.cid);
  banner("err", ERRORS["too-large"]);
  if (open) render();
}
function closedByTooLarge(sock) {
  const sent = [...pendingByCid.values()].filter((m) => m.state === "pending" && m.sentOn === sock);
  const largest = sent.sort((a, b) => b.bytes - a.bytes)[0];
  if (!largest) return;
  frameLimit = Math.min(frameLimit, largest.bytes);
  tooLarge(largest);
}
function resendPending() {  // protocol §2.4: without an ack, resend with the same cid (the node dedupes)
  if (!live) return;
  for (const msg of pendingByCid.values()) if (msg.state === "pending") sendMessage(msg);
}
function retry(msg) {
  if (!pendingByCid.has(msg.cid)) return;
  msg.state = "pending"; msg.retry = false;
  if (live) sendMessage(msg);
  if (open) render();
}
function takeOver() { clearBanner("conn"); stopped = false; attempt = 0; reconnect(); }
function onError(m) {
  console.warn("error from the node:", m.error, m.detail, m.rid || m.cid || "");
  if (m.cid && pendingByCid.has(m.cid) && m.error !== "rate-limited") {
    const msg = pendingByCid.get(m.cid); msg.state = "failed"; msg.why = WHY_NOT_SENT[m.error];
    if (RETRYABLE.has(m.error)) msg.retry = true; else pendingByCid.delete(m.cid);  // "Retry" resends the same cid
    if (open) render();
  }
  // rate-limited: the dropped frame (its cid named, or, from an older node, none) may have been
  // a message, so every message still waiting for its ack goes again (same cid) a second later
  if (m.error === "rate-limited") setTimeout(resendPending, 1000);
  if (m.rid === "contacts" && RETRYABLE.has(m.error)) { contactsRefused(m.error); return; }  // no banner: the page asks again
  if (m.rid === "history") for (const c of convs.values()) c.paging = false;  // "older messages" may be asked again
  const text = CONTEXT_ERRORS[(m.rid || "") + ":" + m.error] || ERRORS[m.error] || "Something went wrong.";
  if (m.rid === "ready") {
    if (m.error === "unauthorized" || m.error === "invalid") { token.clear(); showAuth(); banner("err", text); return; }  // expired or foreign token
    // anything else (the store is unavailable, ...): keep the token, try again with backoff
    if (ws) detach(ws);
    ws = null; live = false; outage = text; lastClose = null;
    scheduleReconnect(text); return;
  }
  banner("err", text);
}

// ---------- contacts, presence, departments ----------
// One `contacts` at a time (a burst of new colleagues asks once more after the answer). A refused
// one (rate-limited: the connection's contacts budget is used up; unavailable, internal) is asked
// again after 1 s, doubling to 30 s (±25 %): until then the list is not up to date, and a message
// from someone not in it would stay out of sight.
// current: answered on this connection (before that, and while disconnected, no dot says online)
const contactsAsk = {inFlight: false, again: false, timer: null, tries: 0, loaded: false, current: false};
function forgetContactsAsk(loaded) {  // a new connection (loaded: a list was shown before), or a sign-out
  clearTimeout(contactsAsk.timer);
  Object.assign(contactsAsk, {inFlight: false, again: false, timer: null, tries: 0, loaded, current: false});
}
function askContacts(fresh) {
  const a = contactsAsk;
  if (fresh) forgetContactsAsk(a.loaded);
  if (a.inFlight || a.timer) { a.again = true; return; }
  if (!live) return;                               // the next ready-ok asks
  a.inFlight = true; a.again = false;
  send("contacts", {rid: "contacts"});
}
function contactsRefused(kind) {
  const a = contactsAsk; a.inFlight = false;
  const delay = backoffMs(a.tries);
  a.tries++;
  console.info("contacts refused (" + kind + "): asking again in", Math.round(delay), "ms");
  a.timer = setTimeout(() => { a.timer = null; askContacts(); }, delay);
  renderContacts();
}
function onContacts(m) {
  const a = contactsAsk; a.inFlight = false; a.tries = 0; a.loaded = true; a.current = true;
  if (a.again) askContacts();
  users = new Map(m.users.map((u) => [u.userId, named(u)]));
  groups = new Map(m.groups.map((g) => [g.groupId, named(g)]));
  depts = (m.departments || []).map(named);
  for (const u of m.users) { const c = conv("friend", u.userId); if (c !== open) c.unread = u.unread || 0; }
  for (const g of m.groups) { const c = conv("group", g.groupId); c.name = g.name; if (c !== open) c.unread = g.unread || 0; }
  renderContacts(); showHead();
}
function onPresence(m) {
  let unknown = false;
  for (const p of m.users || [m]) {
    if (p.userId === me) continue;
    const u = users.get(p.userId);
    if (u) u.online = p.online; else unknown = true;
  }
  if (unknown) askContacts();  // a new colleague
  renderContacts();
}

// ---------- conversations ----------
const keyOf = (type, id) => type + ":" + id;
function conv(type, id) {
  const k = keyOf(type, id);
  if (!convs.has(k)) convs.set(k, {type, id, key: k, msgs: new Map(), more: false, loaded: false, unread: 0});
  return convs.get(k);
}
function convOf(msg) {  // a friend message is filed under the other user
  if (msg.type === "group") return conv("group", msg.chatId);
  return conv("friend", msg.fromId === me ? msg.chatId : msg.fromId);
}
function addMsg(msg) {
  const c = convOf(msg), known = c.msgs.get(msg.id);
  if (known) {  // a duplicate (replay, history overlap): keep the newest state the server told
    if (msg.status) known.state = msg.status;
    if (msg.readCount != null) known.readCount = msg.readCount;
    if (msg.messageType === "recalled") { known.messageType = "recalled"; known.content = ""; }
    return null;
  }
  msg.state = msg.status || (msg.fromId === me ? "sent" : "");
  c.msgs.set(msg.id, msg); byId.set(msg.id, msg);
  return c;
}
function acked(m) {  // {cid, id, timestamp}: the ack, or the stored copy of a resent message reaching this session first
  const msg = pendingByCid.get(m.cid); if (!msg) return;
  pendingByCid.delete(m.cid);
  const c = convOf(msg);
  c.msgs.delete("c:" + m.cid);
  // one bubble: the pending one becomes the acked one, unless the stored copy came first (a resend)
  if (!c.msgs.has(m.id)) { Object.assign(msg, {id: m.id, timestamp: m.timestamp, state: "sent", retry: false}); c.msgs.set(m.id, msg); byId.set(m.id, msg); }
  if (c === open) render();
}
function onMessage(m) {
  if (m.fromId === me && m.cid && pendingByCid.has(m.cid)) { acked(m); return; }
  const c = addMsg(m);
  if (m.type === "friend" && m.fromId !== me) {   // confirm delivery (duplicates too: replay lasts until confirmed)
    toConfirm.push(m.id);
    clearTimeout(confirmTimer); confirmTimer = setTimeout(flushConfirm, 30);
  }
  if ((m.fromId !== me && !users.has(m.fromId)) || (m.type === "group" && !groups.has(m.chatId))) askContacts();
  if (!c) return;
  if (c === open) { render(); markRead(); } else if (m.fromId !== me) { c.unread++; renderContacts(); }
}
function flushConfirm() {
  const ids = toConfirm.splice(0, 1000);
  if (ids.length) send("received", {ids});
  if (toConfirm.length) flushConfirm();
}
function onHistory(m) {
  const c = conv(m.type, m.chatId);
  if (c.stale && !c.paging) { trimStale(c, m.messages); c.stale = false; }
  for (const msg of m.messages) addMsg(msg);
  const paging = c.paging; c.paging = false;
  c.more = paging ? m.more : (c.loaded ? c.more : m.more); c.loaded = true;
  if (c === open) { render(paging ? "keep" : "bottom"); markRead(); }
}
function trimStale(c, page) {  // the newest page after a reconnect: drop the cached messages older than it
  if (!page.length) return;     // ("older messages" then pages back from the page, so no gap is left)
  const oldest = page.reduce((a, x) => (BigInt(x.id) < a ? BigInt(x.id) : a), BigInt(page[0].id));
  for (const [k, msg] of c.msgs) if (msg.id && BigInt(msg.id) < oldest) { c.msgs.delete(k); byId.delete(msg.id); }
}
function openConv(type, id) {
  open = conv(type, id); open.unread = 0;
  showHead(); $("text").focus();
  renderContacts(); render("bottom");
  if (!open.loaded) send("history", {chatId: id, type, limit: 30, rid: "history"});
  markRead();
}
function showHead() {  // the open conversation's name; a group's members; no compose box in a group one has left
  if (!open) return;
  const g = open.type === "group" ? groups.get(open.id) : null, u = users.get(open.id);
  if (open.type === "friend") $("convhead").textContent = u ? u.name : open.id;
  else if (g) $("convhead").textContent = "# " + g.name + "  (" + g.members.length + (g.members.length === 1 ? " member)" : " members)");
  else $("convhead").textContent = "# " + (named(open).name || "") + "  (you are no longer a member of this group)";
  $("members").hidden = !g;
  if (g) $("members").textContent = g.members.map((x) => (x === me ? "you" : (users.get(x) || {}).name || x)).join(", ");
  $("compose").hidden = open.type === "group" && !g;
}
function onGroup(m) {  // created, changed, or (members without me) this person was removed
  conv("group", m.groupId).name = m.name;  // kept for the head of a group one has left
  if (Array.isArray(m.members) && !m.members.includes(me)) groups.delete(m.groupId); else groups.set(m.groupId, named(m));
  renderContacts(); showHead();
}
function older() {
  if (!open || open.paging || !live) return;
  const oldest = sorted(open).find((m) => m.id);
  open.paging = true;
  send("history", {chatId: open.id, type: open.type, before: oldest ? oldest.id : undefined, limit: 30, rid: "history"});
}
$("log").onscroll = () => { if (open && open.more && $("log").scrollTop < 40) older(); };  // scrolled to the top: the older page
function markRead() {
  if (!open || !live || document.visibilityState !== "visible") return;
  const last = sorted(open).filter((m) => m.id && m.fromId !== me).pop(); if (!last) return;
  if ((sentRead.get(open.key) || 0) >= last.timestamp) return;
  sentRead.set(open.key, last.timestamp);
  send("read", {chatId: open.id, type: open.type, timestamp: last.timestamp});
}
document.addEventListener("visibilitychange", markRead);
function sorted(c) {
  const cmp = (a, b) => (!a.id || !b.id) ? (!a.id - !b.id) || a.timestamp - b.timestamp : (BigInt(a.id) < BigInt(b.id) ? -1 : 1);
  return [...c.msgs.values()].sort(cmp);
}
$("compose").onsubmit = (e) => {
  e.preventDefault();
  const content = $("text").value; if (!content.trim() || !open) return;
  const cid = crypto.randomUUID();
  const msg = {cid, chatId: open.id, type: open.type, messageType: "text", content, fromId: me, timestamp: Date.now() + clockSkew, state: "pending"};
  pendingByCid.set(cid, msg); open.msgs.set("c:" + cid, msg);
  if (live) sendMessage(msg);  // else it goes out (resendPending) once the connection is back
  $("text").value = ""; fitText(); render("bottom");
};
// Enter sends, Shift+Enter starts a new line (not while an input method composes: its Enter picks the word)
$("text").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); $("compose").requestSubmit(); }
};
function fitText() { const t = $("text"); t.rows = Math.min(6, t.value.split("\n").length); }
$("text").oninput = fitText;

// ---------- rendering ----------
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; };
function dayLabel(ts) {
  const d = new Date(ts), today = new Date(); today.setHours(0, 0, 0, 0);
  const day = new Date(d); day.setHours(0, 0, 0, 0);
  const diff = Math.round((today - day) / 86400000);
  if (diff === 0) return "Today";
  if (diff === 1) return "Yesterday";
  return d.toLocaleDateString(undefined, {weekday: "short", year: "numeric", month: "short", day: "numeric"});
}
const TICKS = {pending: "sending …", sent: "sent ✓", delivered: "delivered ✓✓", read: "read ✓✓", failed: "not sent"};
function render(scroll) {  // "bottom", "keep" (older page above), default: follow if at the bottom
  const log = $("log"), c = open, atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const prevHeight = log.scrollHeight;
  log.replaceChildren();
  if (c.more) { const b = el("button", "plain", "older messages"); b.id = "older"; b.onclick = older; log.append(b); }
  if (c.loaded && !c.msgs.size) log.append(el("div", "empty", "No messages yet"));
  const now = Date.now() + clockSkew, readTs = c.type === "friend" ? peerRead.get(c.id) || 0 : 0;
  let lastDay = null;
  for (const m of sorted(c)) {
    const local = m.timestamp - clockSkew, day = dayLabel(local);
    if (day !== lastDay) { log.append(el("div", "day", day)); lastDay = day; }
    const mine = m.fromId === me, recalled = m.messageType === "recalled" || m.messageType === "deleted";
    const div = el("div", "msg" + (mine ? " mine" : "") + (recalled ? " recalled" : "") + (m.state === "failed" ? " failed" : ""));
    if (m.id) div.dataset.id = m.id;
    if (c.type === "group" && !mine) div.append(el("div", "from", (users.get(m.fromId) || {}).name || m.fromId));
    div.append(el("div", "text", recalled ? (m.messageType === "deleted" ? "message deleted" : "message recalled") : m.messageType === "text" ? m.content : "[" + m.messageType + "] " + m.content));
    const meta = el("div", "meta", new Date(local).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}));
    if (mine && !recalled) {
      let state = m.state;
      if (m.id && c.type === "friend" && readTs >= m.timestamp) state = "read";
      if (c.type === "group" && m.id) meta.append(el("span", "state readcount", "read by " + (m.readCount || 0)));
      else meta.append(el("span", "state " + state, (TICKS[state] || state) + (state === "failed" && m.why ? ": " + m.why : "")));
      if (m.state === "failed" && m.retry) { const b = el("button", "retry", "Retry"); b.onclick = () => retry(m); meta.append(b); }
      if (m.id && now - m.timestamp < recallMs) {
        const b = el("button", "recall", "recall"); b.dataset.ts = m.timestamp; b.onclick = () => send("recall", {id: m.id, rid: "recall"}); meta.append(b);
      }
    }
    div.append(meta); log.append(div);
  }
  if (scroll === "keep") log.scrollTop = log.scrollHeight - prevHeight;
  else if (atBottom || scroll === "bottom") log.scrollTop = log.scrollHeight;
}
function contactRow(type, id, label, dotOn) {
  const c = convs.get(keyOf(type, id)), div = el("div", "contact" + (open && open.key === keyOf(type, id) ? " active" : ""));
  div.dataset.chat = keyOf(type, id);
  if (type === "friend") {
    div.dataset.userId = id;
    const known = live && contactsAsk.current;
    const dot = el("span", "dot" + (known && dotOn ? " on" : "")); dot.title = !known ? "not known until connected" : dotOn ? "online" : "offline";
    div.append(dot);
  }
  div.append(el("span", "name", label));
  if (c && c.unread) div.append(el("span", "badge", c.unread));
  div.onclick = () => openConv(type, id);
  return div;
}
function renderContacts() {
  const byName = (a, b) => b.online - a.online || a.name.localeCompare(b.name);
  const inDept = new Map(), placed = new Set();
  for (const d of depts) inDept.set(d.deptId, d.members.filter((u) => users.has(u)).map((u) => users.get(u)));
  const node = (d) => {  // one department: its people, then its sub-departments
    const box = el("details", "dept"); box.open = true; box.dataset.dept = d.name;
    const people = (inDept.get(d.deptId) || []).sort(byName);
    people.forEach((u) => placed.add(u.userId));
    const children = depts.filter((k) => k.parentId === d.deptId).map(node);
    const online = people.filter((u) => u.online).length;  // while disconnected the page does not know who is online
    const summary = el("summary", "", d.name); summary.append(el("span", "count", (live && contactsAsk.current ? online : "?") + "/" + people.length));
    box.append(summary, ...people.map((u) => contactRow("friend", u.userId, u.name, u.online)), ...children);
    return box;
  };
  const tree = depts.filter((d) => !d.parentId || !depts.some((p) => p.deptId === d.parentId)).map(node);
  const rest = [...users.values()].filter((u) => !placed.has(u.userId)).sort(byName);
  if (tree.length && rest.length) {
    const box = el("details", "dept"); box.open = true; box.dataset.dept = "";
    box.append(el("summary", "", "No department"), ...rest.map((u) => contactRow("friend", u.userId, u.name, u.online)));
    tree.push(box);
  } else if (!tree.length) tree.push(...rest.map((u) => contactRow("friend", u.userId, u.name, u.online)));
  $("users").replaceChildren(...tree);
  if (!users.size) $("users").append(el("div", "empty", !contactsAsk.loaded ? "loading people …" : "no other users yet"));
  if (contactsAsk.timer) $("users").prepend(el("div", "empty stale", "The server is busy: this list may be out of date. Asking again shortly …"));
  $("groups").replaceChildren(...[...groups.values()].map((g) => contactRow("group", g.groupId, "# " + g.name)));
  // the tab's title counts what is unread in the conversations listed (seen from another tab)
  const unread = [...convs.values()].filter((c) => (c.type === "group" ? groups : users).has(c.id)).reduce((n, c) => n + c.unread, 0);
  document.title = (unread ? "(" + unread + ") " : "") + "vim-cluster chat";
  const picked = new Set([...$("pick").querySelectorAll("input:checked")].map((cb) => cb.value));
  $("pick").replaceChildren(...[...users.values()].map((u) => {
    const l = el("label"), cb = el("input"); cb.type = "checkbox"; cb.value = u.userId; cb.checked = picked.has(u.userId);
    l.append(cb, " " + u.name); return l;
  }));
}

// ---------- forms ----------
function resetUser() {  // everything that belongs to the person signed in (logout, or another person's ready-ok)
  owner = null; open = null; convs.clear(); byId.clear(); pendingByCid.clear(); peerRead.clear(); sentRead.clear();
  toConfirm = []; clearTimeout(confirmTimer); users = new Map(); groups = new Map(); depts = [];
  forgetContactsAsk(false);
  $("convhead").textContent = "Pick a contact"; $("members").hidden = true; $("compose").hidden = true; $("text").value = ""; fitText();
  $("log").replaceChildren(el("div", "empty", "No conversation open"));
  $("newgroup").reset(); $("newgroup").hidden = true;
  renderContacts();
}
function showAuth() { me = null; $("auth").hidden = false; $("main").hidden = true; $("logout").hidden = true; }
function creds(form) {
  const d = new FormData(form); stayNext = d.get("stay") === "on";
  S.setItem("username", d.get("username")); if (stayNext) L.setItem("username", d.get("username"));
  return {username: d.get("username"), password: d.get("password")};
}
$("loginForm").onsubmit = (e) => { e.preventDefault(); const c = creds(e.target); withSocket(() => send("login", {...c, rid: "login"})); };
$("registerForm").onsubmit = (e) => {
  e.preventDefault(); const c = creds(e.target), name = new FormData(e.target).get("name");
  pendingCreds = c; withSocket(() => send("register", name ? {...c, name, rid: "register"} : {...c, rid: "register"}));
};
function withSocket(fn) { attempt = 0; ws && ws.readyState === WebSocket.OPEN ? fn() : connect(fn); }
$("toggleGroup").onclick = () => { $("newgroup").hidden = !$("newgroup").hidden; };
$("newgroup").onsubmit = (e) => {
  e.preventDefault();
  const members = [...$("pick").querySelectorAll("input:checked")].map((cb) => cb.value);
  send("group-create", {name: e.target.name.value, members, rid: "group"});
  e.target.reset(); e.target.hidden = true;
};
$("logout").onclick = () => {
  token.clear(); L.removeItem("username"); stopped = true; clearTimeout(retryTimer); retryWaiting = false; if (ws) ws.close();
  live = false; attempt = 0; triesHere = 0; lastClose = null; outage = null;
  resetUser(); showAuth(); setStatus("logged out");
  document.querySelectorAll("#banners .banner").forEach((d) => d.remove());
};
window.addEventListener("online", () => { if (!ws && token.get() && !stopped) reconnect(); });

// ---------- start: prefill the client URL from this node's /healthz ----------
(async () => {
  let url = S.getItem("url");
  if (!url) {
    try {
      const h = await (await fetch("/healthz")).json();
      const u = new URL(h.url); u.hostname = location.hostname || u.hostname; url = u.toString();
    } catch { url = "ws://" + (location.hostname || "127.0.0.1") + ":8180/"; }
  }
  $("url").value = url;
  if (token.get()) reconnect();
})();
