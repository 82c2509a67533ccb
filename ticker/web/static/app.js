// The live board: one Socket.IO connection, the documented protocol (docs/API.md), no framework.
"use strict";

const $ = (selector) => document.querySelector(selector);
const SPARK_POINTS = 60; // the sparkline shows the last minute or so of prices
const PING_EVERY_MS = 2000;
const AGE_EVERY_MS = 1000; // ages keep counting between ticks (and after the connection is gone)
const TOKEN_KEY = "ticker.jwt"; // sessionStorage: the token lives as long as the tab

const state = { socket: null, rows: new Map(), labels: new Map(), results: [], searchAvailable: true, ages: [] };

// --- connection -------------------------------------------------------------------------------

function setStatus(kind, text) {
  $("#status").dataset.state = kind;
  $("#status-text").textContent = text;
}

function connect(token) {
  disconnect();
  $("#connect-error").textContent = "";
  setStatus("connecting", "connecting…");
  sessionStorage.setItem(TOKEN_KEY, token);
  const socket = io({ auth: { token }, transports: ["websocket", "polling"] });
  state.socket = socket;

  socket.on("connect", () => {
    $("#subscribe").disabled = false;
    $("#disconnect").disabled = false;
    resubscribe(); // a reconnected socket is a new connection: its subscriptions start empty
  });
  socket.on("connected", (info) => setStatus("connected", `connected as ${info.user}`));
  socket.on("connect_error", (err) => {
    markAll("stale");
    const code = err.data && err.data.code ? err.data.code : "connect_failed";
    setStatus("error", code);
    $("#connect-error").textContent = `${code}: ${err.message}`;
  });
  socket.on("disconnect", (reason) => {
    $("#subscribe").disabled = true;
    markAll("stale");
    setStatus(socket.active ? "connecting" : "disconnected", socket.active ? `reconnecting (${reason})` : "disconnected");
  });
  socket.on("error", onError);
  socket.on("upstream_restored", (event) => event.tokens.forEach((token) => mark(token, "")));
  socket.on("unsubscribed", (event) => {
    // The server dropped these (docs/API.md): they stay on the board, marked, with no more ticks.
    const why = { not_entitled: "not entitled", capacity_exhausted: "no capacity upstream" }[event.reason];
    if (why) event.tokens.forEach((token) => mark(token, why));
  });
  socket.on("ticks", (ticks) => ticks.forEach(onTick));
}

function onError(err) {
  if (err.code === "upstream_unavailable") {
    (err.tokens || []).forEach((token) => mark(token, `stale (${err.reason})`));
    return;
  }
  if (err.code === "capacity_exhausted") return; // told for each token by the unsubscribed that follows
  $("#subscribe-error").textContent = `${err.code}: ${err.message}`;
}

function disconnect() {
  markAll("stale");
  if (state.socket) {
    state.socket.disconnect();
    state.socket = null;
  }
  $("#subscribe").disabled = true;
  $("#disconnect").disabled = true;
  setStatus("disconnected", "disconnected");
  $("#latency").textContent = "";
}

function ping() {
  const socket = state.socket;
  if (!socket || !socket.connected) return;
  const sent = performance.now();
  socket.timeout(5000).emit("ping", null, (err) => {
    if (err) return;
    const rtt = Math.round(performance.now() - sent);
    const ages = state.ages.splice(0).sort((a, b) => a - b);
    const age = ages.length ? ` · tick age p50 ${ages[Math.floor(ages.length / 2)]} ms` : "";
    $("#latency").textContent = `rtt ${rtt} ms${age}`;
  });
}

// --- subscriptions ----------------------------------------------------------------------------

function subscribe(request, label) {
  const socket = state.socket;
  if (!socket || !socket.connected) return;
  $("#subscribe-error").textContent = "";
  socket.timeout(10000).emit("subscribe", request, (err, reply) => {
    if (err) { $("#subscribe-error").textContent = "no reply to subscribe (timed out)"; return; }
    if (reply.error) { $("#subscribe-error").textContent = `${reply.error.code}: ${reply.error.message}`; return; }
    reply.tokens.forEach((token) => {
      if (label && reply.tokens.length === 1) state.labels.set(token, label);
      addRow(token, reply.mode);
      mark(token, ""); // held again: ticks (or a notice saying why not) follow
      if (!state.labels.has(token)) lookUpLabel(token);
    });
    if (reply.rejected.length) {
      $("#subscribe-error").textContent = reply.rejected.map((r) => `${r.token}: ${r.code}`).join(", ");
    }
  });
}

// A token subscribed by number is labelled EXCHANGE:SYMBOL once the registry says which it is.
async function lookUpLabel(token) {
  const found = await searchInstruments(String(token), 5).catch(() => []);
  const instrument = found.find((i) => i.instrument_token === token);
  if (!instrument) return;
  state.labels.set(token, `${instrument.exchange}:${instrument.tradingsymbol}`);
  const row = state.rows.get(token);
  if (row) row.cells.name.textContent = state.labels.get(token);
}

function resubscribe() {
  const byMode = {};
  state.rows.forEach((row, token) => { (byMode[row.mode] = byMode[row.mode] || []).push(token); });
  Object.entries(byMode).forEach(([mode, tokens]) => subscribe({ tokens, mode }));
}

function unsubscribe(token) {
  if (state.socket && state.socket.connected) state.socket.emit("unsubscribe", { tokens: [token] });
  const row = state.rows.get(token);
  if (row) { row.tr.remove(); row.depthTr.remove(); state.rows.delete(token); }
  updateCount();
}

// What the search box names: token numbers and EXCHANGE:SYMBOL names, or the first result.
// A symbol may hold spaces ("NSE:NIFTY 50"), so names are split at commas and before each
// EXCHANGE: prefix, never at any space.
function parseWanted(text) {
  const tokens = [];
  const instruments = [];
  text.split(/\s*,\s*|\s+(?=[A-Za-z]+:)/).filter(Boolean).forEach((part) => {
    if (/^[\d\s]+$/.test(part)) part.split(/\s+/).filter(Boolean).forEach((t) => tokens.push(Number(t)));
    else if (/^[A-Za-z]+:/.test(part)) instruments.push(part.trim().toUpperCase());
  });
  return { tokens, instruments };
}

// Rows whose prices are not live: "stale" (disconnected, or upstream stopped), "not entitled", ….
function mark(token, why) {
  const row = state.rows.get(token);
  if (!row) return;
  row.cells.state.textContent = why;
  row.tr.classList.toggle("stale", why !== "");
}

function markAll(why) {
  state.rows.forEach((row, token) => mark(token, why));
}

// --- the board --------------------------------------------------------------------------------

function cell(className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  return td;
}

function addRow(token, mode) {
  let row = state.rows.get(token);
  if (!row) {
    const tr = document.createElement("tr");
    tr.dataset.token = token;
    const cells = {
      name: cell("name"), mode: cell("mode"), price: cell("num price"), change: cell("num change"),
      volume: cell("num volume"), spark: cell("spark"), age: cell("num age"), state: cell("state"),
      actions: cell(),
    };
    const remove = document.createElement("button");
    remove.className = "link";
    remove.title = "unsubscribe";
    remove.textContent = "✕";
    remove.addEventListener("click", () => unsubscribe(token));
    cells.actions.appendChild(remove);
    cells.spark.innerHTML = '<svg class="spark" viewBox="0 0 120 28" preserveAspectRatio="none"><polyline/></svg>';
    Object.values(cells).forEach((td) => tr.appendChild(td));
    const depthTr = document.createElement("tr");
    depthTr.className = "depth";
    depthTr.hidden = true;
    const depthTd = cell();
    depthTd.colSpan = 9;
    depthTr.appendChild(depthTd);
    $("#board tbody").append(tr, depthTr);
    row = { tr, depthTr, depthTd, cells, prices: [], seq: -1, mode, ingestedAt: null };
    state.rows.set(token, row);
  }
  row.mode = mode;
  row.cells.name.textContent = state.labels.get(token) || String(token);
  row.cells.mode.textContent = mode;
  row.depthTr.hidden = mode !== "full";
  updateCount();
}

function updateCount() {
  $("#count").textContent = state.rows.size ? `(${state.rows.size})` : "";
  $("#empty").hidden = state.rows.size > 0;
}

const price = (value) => (value === undefined || value === null ? "–" : Number(value).toFixed(2));
const volume = (value) => (value === undefined ? "–" : Number(value).toLocaleString("en-IN"));

function onTick(tick) {
  const row = state.rows.get(tick.instrument_token);
  if (!row || tick.seq <= row.seq) return; // a snapshot older than what is on screen
  row.seq = tick.seq;
  row.tr.dataset.seq = tick.seq;
  mark(tick.instrument_token, "");
  const { cells } = row;
  cells.price.textContent = price(tick.last_price);
  cells.price.classList.remove("flash");
  void cells.price.offsetWidth; // restart the flash animation
  cells.price.classList.add("flash");
  if (tick.change !== undefined) {
    cells.change.textContent = `${tick.change >= 0 ? "+" : ""}${Number(tick.change).toFixed(2)}%`;
    cells.change.className = `num change ${tick.change >= 0 ? "up" : "down"}`;
  } else {
    cells.change.textContent = "–";
  }
  cells.volume.textContent = volume(tick.volume_traded);
  // A snapshot's age_ms is by the server's clock; a live tick's age is now − ingest_ts.
  if (tick.age_ms !== undefined) row.ingestedAt = Date.now() - tick.age_ms;
  else if (tick.ingest_ts) row.ingestedAt = tick.ingest_ts;
  if (row.ingestedAt !== null) {
    const age = Math.max(0, Date.now() - row.ingestedAt);
    cells.age.textContent = formatAge(age);
    if (!tick.snapshot) state.ages.push(age);
  }
  row.prices.push(tick.last_price);
  if (row.prices.length > SPARK_POINTS) row.prices.shift();
  drawSpark(cells.spark.querySelector("polyline"), row.prices);
  if (tick.depth) drawDepth(row.depthTd, tick.depth);
}

function formatAge(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function refreshAges() {
  const now = Date.now();
  state.rows.forEach((row) => {
    if (row.ingestedAt !== null) row.cells.age.textContent = formatAge(Math.max(0, now - row.ingestedAt));
  });
}

function drawSpark(polyline, prices) {
  const low = Math.min(...prices);
  const high = Math.max(...prices);
  const span = high - low || 1;
  const step = 120 / Math.max(1, prices.length - 1); // fill the width from the first points
  const points = prices.map((p, i) => `${(i * step).toFixed(1)},${(26 - ((p - low) / span) * 24).toFixed(1)}`);
  polyline.setAttribute("points", points.join(" "));
}

function drawDepth(td, depth) {
  const table = document.createElement("table");
  table.className = "depth";
  const head = table.insertRow();
  ["bid qty", "orders", "bid", "ask", "orders", "ask qty"].forEach((text) => {
    const th = document.createElement("th");
    th.textContent = text;
    head.appendChild(th);
  });
  for (let i = 0; i < Math.max(depth.buy.length, depth.sell.length); i += 1) {
    const buy = depth.buy[i] || {};
    const sell = depth.sell[i] || {};
    const tr = table.insertRow();
    [[buy.quantity, "bid"], [buy.orders, ""], [price(buy.price), "bid"],
     [price(sell.price), "ask"], [sell.orders, ""], [sell.quantity, "ask"]].forEach(([text, className]) => {
      const c = tr.insertCell();
      c.className = `num ${className}`;
      c.textContent = text === undefined ? "" : text;
    });
  }
  td.replaceChildren(table);
}

// --- instrument search (GET /instruments?q=) -----------------------------------------------------

let searchTimer = null;

class SearchFailed extends Error {}

async function searchInstruments(query, limit) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(`/instruments?q=${encodeURIComponent(query)}&limit=${limit}`, {
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  if (response.status === 404) throw new Error("not available");
  if (!response.ok) throw new SearchFailed(`search failed (${response.status})`);
  const body = await response.json();
  return Array.isArray(body) ? body : body.instruments || body.results || [];
}

function clearResults() {
  state.results = [];
  $("#results").replaceChildren();
  $("#search-note").textContent = "";
}

async function search(query) {
  // Token numbers, and lists (a comma, or several EXCHANGE: names), are subscribed as typed.
  const names = (query.match(/(^|\s)[A-Za-z]+:/g) || []).length;
  if (!query || !state.searchAvailable || /^[\d\s,]+$/.test(query) || query.includes(",") || names > 1) {
    clearResults();
    return;
  }
  try {
    state.results = await searchInstruments(query, 20);
    if ($("#search").value.trim() === query) showResults(state.results); // not an answer overtaken by typing
  } catch (err) {
    if (err instanceof SearchFailed) { $("#search-note").textContent = err.message; return; }
    state.searchAvailable = false;
    list.replaceChildren();
    $("#search-note").textContent =
      "Instrument search is not available here: enter token numbers or EXCHANGE:SYMBOL and press Subscribe.";
  }
}

function showResults(results) {
  $("#search-note").textContent = results.length ? "" : "no instrument matches";
  $("#results").replaceChildren(...results.map((instrument) => {
    const li = document.createElement("li");
    const label = `${instrument.exchange}:${instrument.tradingsymbol}`;
    const name = document.createElement("span");
    name.className = "symbol";
    name.textContent = label;
    const detail = document.createElement("span");
    detail.className = "detail muted";
    detail.textContent = [instrument.name, instrument.segment, instrument.instrument_token].filter(Boolean).join(" · ");
    li.append(name, detail);
    li.dataset.token = instrument.instrument_token;
    li.addEventListener("click", () => {
      subscribe({ tokens: [instrument.instrument_token], mode: $("#mode").value }, label);
      doneWithSearch();
    });
    return li;
  }));
}

// --- wiring -----------------------------------------------------------------------------------

$("#connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("#token").value.trim();
  if (token) connect(token);
});
$("#disconnect").addEventListener("click", disconnect);

// Once something is subscribed from the box, the box and its results make way for the next.
function doneWithSearch() {
  clearTimeout(searchTimer);
  $("#search").value = "";
  clearResults();
}

$("#subscribe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#search").value.trim();
  const wanted = parseWanted(text);
  const mode = $("#mode").value;
  if (wanted.tokens.length || wanted.instruments.length) {
    if (wanted.tokens.length) subscribe({ tokens: wanted.tokens, mode });
    // One request per symbol, so each row is labelled with the symbol it was asked for.
    wanted.instruments.forEach((instrument) => subscribe({ instruments: [instrument], mode }, instrument));
  } else if (state.results.length) {
    const first = state.results[0];
    subscribe({ tokens: [first.instrument_token], mode }, `${first.exchange}:${first.tradingsymbol}`);
  } else {
    return;
  }
  doneWithSearch();
});
$("#search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search(event.target.value.trim()), 250);
});
const devButton = $("#dev-token");
if (devButton) {
  devButton.addEventListener("click", async () => {
    const response = await fetch("/dev/token", { method: "POST" });
    if (!response.ok) { $("#connect-error").textContent = `no development token (${response.status})`; return; }
    $("#token").value = (await response.json()).token;
    connect($("#token").value);
  });
}

$("#token").value = sessionStorage.getItem(TOKEN_KEY) || "";
updateCount();
setInterval(ping, PING_EVERY_MS);
setInterval(refreshAges, AGE_EVERY_MS);
