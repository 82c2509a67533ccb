// The live board: one Socket.IO connection, the documented protocol (docs/API.md), no framework.
"use strict";

const $ = (selector) => document.querySelector(selector);
const SPARK_POINTS = 60; // the sparkline shows the last minute or so of prices
const PING_EVERY_MS = 2000;
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
    const code = err.data && err.data.code ? err.data.code : "connect_failed";
    setStatus("error", code);
    $("#connect-error").textContent = `${code}: ${err.message}`;
  });
  socket.on("disconnect", (reason) => {
    $("#subscribe").disabled = true;
    setStatus(socket.active ? "connecting" : "disconnected", socket.active ? `reconnecting (${reason})` : "disconnected");
  });
  socket.on("error", (err) => { $("#subscribe-error").textContent = `${err.code}: ${err.message}`; });
  socket.on("ticks", (ticks) => ticks.forEach(onTick));
}

function disconnect() {
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
    if (reply.code) { $("#subscribe-error").textContent = `${reply.code}: ${reply.message}`; return; }
    reply.tokens.forEach((token) => {
      if (label && reply.tokens.length === 1) state.labels.set(token, label);
      addRow(token, reply.mode);
    });
    if (reply.rejected.length) {
      $("#subscribe-error").textContent = reply.rejected.map((r) => `${r.token}: ${r.code}`).join(", ");
    }
  });
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

// What the search box names: token numbers and EXCHANGE:SYMBOL strings, or the first result.
function parseWanted(text) {
  const tokens = [];
  const instruments = [];
  text.split(/[\s,]+/).filter(Boolean).forEach((part) => {
    if (/^\d+$/.test(part)) tokens.push(Number(part));
    else if (part.includes(":")) instruments.push(part.toUpperCase());
  });
  return { tokens, instruments };
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
      volume: cell("num volume"), spark: cell("spark"), age: cell("num age"), actions: cell(),
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
    depthTd.colSpan = 8;
    depthTr.appendChild(depthTd);
    $("#board tbody").append(tr, depthTr);
    row = { tr, depthTr, depthTd, cells, prices: [], seq: -1, mode };
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
  if (tick.ingest_ts) {
    const age = Math.max(0, Date.now() - tick.ingest_ts);
    cells.age.textContent = `${age} ms`;
    state.ages.push(age);
  }
  row.prices.push(tick.last_price);
  if (row.prices.length > SPARK_POINTS) row.prices.shift();
  drawSpark(cells.spark.querySelector("polyline"), row.prices);
  if (tick.depth) drawDepth(row.depthTd, tick.depth);
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

async function search(query) {
  const list = $("#results");
  // Token numbers and lists of EXCHANGE:SYMBOL are subscribed as typed, not searched.
  if (!query || !state.searchAvailable || /^[\d\s,]+$/.test(query) || /[\s,]/.test(query)) {
    list.replaceChildren();
    return;
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    const response = await fetch(`/instruments?q=${encodeURIComponent(query)}&limit=20`, {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    if (response.status === 404) throw new Error("not available");
    if (!response.ok) { $("#search-note").textContent = `search failed (${response.status})`; return; }
    const body = await response.json();
    state.results = Array.isArray(body) ? body : body.instruments || body.results || [];
    showResults(state.results);
  } catch (err) {
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
    name.textContent = label;
    const detail = document.createElement("span");
    detail.className = "muted";
    detail.textContent = `${instrument.name || ""} ${instrument.segment || ""} ${instrument.instrument_token}`;
    li.append(name, detail);
    li.dataset.token = instrument.instrument_token;
    li.addEventListener("click", () => {
      subscribe({ tokens: [instrument.instrument_token], mode: $("#mode").value }, label);
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
  }
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
