// The live board on the project's own client, @ticker/client (clients/js, vendored by
// `make vendor-client`): it connects, resubscribes after every reconnect, renews the JWT,
// reports seq gaps and turns each server code into an event (docs/API.md). No framework.
import { TickerClient, TickerError, expiryOf } from "./vendor/ticker-client/index.js";

const $ = (selector) => document.querySelector(selector);
const SPARK_POINTS = 60; // the sparkline shows the last minute or so of prices
const PING_EVERY_MS = 2000;
const AGE_EVERY_MS = 1000; // ages keep counting between ticks (and after the connection is gone)
const TOKEN_KEY = "ticker.jwt"; // sessionStorage: the token lives as long as the tab
const DEV_RENEW_SECS = 600; // a development token this close to its exp is replaced by a fresh one
// Codes with which the server ends a connection (the client reconnects): shown in the status.
const ENDING = new Set(["slow_consumer", "connection_max_age", "token_expired"]);

const state = {
  client: null, token: "", devUser: null, endedBy: null,
  rows: new Map(), labels: new Map(), results: [], searchAvailable: true, ages: [],
};

// --- connection -------------------------------------------------------------------------------

function setStatus(kind, text) {
  $("#status").dataset.state = kind;
  $("#status-text").textContent = text;
}

// The client asks before every (re)connect and before renewing: a pasted JWT is what it is; a
// development token close to its end is replaced by a fresh one for the same user.
async function currentToken() {
  const exp = expiryOf(state.token);
  if (state.devUser && exp !== null && exp - Date.now() / 1000 < DEV_RENEW_SECS) {
    const fresh = await devToken(state.devUser);
    if (fresh) useToken(fresh.token);
  }
  return state.token;
}

function useToken(token) {
  state.token = token;
  $("#token").value = token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

function connect(token, devUser = null) {
  disconnect();
  $("#connect-error").textContent = "";
  setStatus("connecting", "connecting…");
  useToken(token);
  state.devUser = devUser;
  state.endedBy = null;
  const client = new TickerClient({
    url: location.origin,
    getToken: currentToken,
    socketOptions: { transports: ["websocket", "polling"] },
  });
  state.client = client;
  // Events of a client this page has since closed are no longer news.
  const on = (event, listener) => client.on(event, (payload) => { if (state.client === client) listener(payload); });

  on("connect", (hello) => {
    state.endedBy = null;
    $("#status").dataset.connection = hello.connection_id;
    setStatus("connected", `connected as ${hello.user}`);
    $("#subscribe").disabled = false;
    $("#disconnect").disabled = false;
    const held = client.subscriptions(); // resubscribed by the client before it said connect
    state.rows.forEach((row, token) => { if (held.has(token)) mark(token, ""); });
  });
  on("resubscribed", (replies) => replies.forEach((reply) => reply.tokens.forEach((token) => {
    addRow(token, reply.mode);
    state.rows.get(token).withdrawn = false;
  })));
  on("refused", (refusal) => {
    markAll("stale");
    setStatus("error", refusal.code);
    $("#connect-error").textContent = `${refusal.code}: ${refusal.message}`;
    if (!refusal.retrying) $("#disconnect").disabled = true;
  });
  on("disconnect", ({ reason, reconnecting }) => {
    $("#subscribe").disabled = true;
    markAll("stale");
    delete $("#status").dataset.connection;
    setStatus(reconnecting ? "connecting" : "disconnected",
      reconnecting ? `reconnecting (${state.endedBy || reason})` : "disconnected");
  });
  // A transport failure (server down, network gone): socket.io-client retries by itself.
  client.socket.on("connect_error", (err) => {
    if (state.client === client && client.socket.active) setStatus("connecting", `reconnecting (${err.message})`);
  });
  on("ticks", (ticks) => ticks.forEach(onTick));
  on("gap", onGap);
  on("upstream_unavailable", (err) => (err.tokens || []).forEach((token) => mark(token, `stale (${err.reason})`)));
  on("upstream_restored", (event) => event.tokens.forEach((token) => mark(token, "")));
  on("subscribed", (reply) => reply.tokens.forEach((token) => { addRow(token, reply.mode); lookUpLabel(token); }));
  on("unsubscribed", (event) => {
    // The server dropped these (docs/API.md): they stay on the board, marked, with no more ticks.
    const why = {
      not_entitled: "not entitled", capacity_exhausted: "no capacity upstream",
      instrument_renumbered: "renumbered", instrument_removed: "instrument removed",
    }[event.reason];
    if (why) {
      event.tokens.forEach((token) => {
        mark(token, why);
        const row = state.rows.get(token);
        if (row) row.withdrawn = true; // a tick still in flight must not clear the mark
      });
    }
  });
  on("error", (err) => {
    if (ENDING.has(err.code) && err.grace_secs === undefined) state.endedBy = err.code;
    // Told elsewhere: refusals (connect error), notices (the rows), rejections (the subscribe).
    if (!client.connected || HANDLED.has(err.code) || err.token !== undefined) return;
    $("#subscribe-error").textContent = `${err.code}: ${err.message}`;
  });
}

const HANDLED = new Set([...ENDING, "upstream_unavailable", "capacity_exhausted", "not_entitled"]);

function disconnect() {
  markAll("stale");
  if (state.client) {
    const client = state.client;
    state.client = null;
    client.close();
  }
  $("#subscribe").disabled = true;
  $("#disconnect").disabled = true;
  delete $("#status").dataset.connection;
  setStatus("disconnected", "disconnected");
  $("#latency").textContent = "";
}

async function ping() {
  const client = state.client;
  if (!client || !client.connected) return;
  const sent = performance.now();
  try {
    await client.ping();
  } catch {
    return;
  }
  const rtt = Math.round(performance.now() - sent);
  const ages = state.ages.splice(0).sort((a, b) => a - b);
  const age = ages.length ? ` · tick age p50 ${ages[Math.floor(ages.length / 2)]} ms` : "";
  $("#latency").textContent = `rtt ${rtt} ms${age}`;
}

// --- subscriptions ----------------------------------------------------------------------------

async function subscribe(items, mode, label) {
  const client = state.client;
  if (!client || !client.connected) return;
  $("#subscribe-error").textContent = "";
  let reply;
  try {
    reply = await client.subscribe(items, mode);
  } catch (err) {
    if (state.client !== client) return;
    $("#subscribe-error").textContent = err instanceof TickerError ? `${err.code}: ${err.message}` : String(err);
    return;
  }
  reply.tokens.forEach((token) => {
    if (label && reply.tokens.length === 1) state.labels.set(token, label);
    addRow(token, reply.mode);
    state.rows.get(token).withdrawn = false;
    mark(token, ""); // held again: ticks (or a notice saying why not) follow
    if (!state.labels.has(token)) lookUpLabel(token);
  });
  if (reply.rejected.length) {
    $("#subscribe-error").textContent = reply.rejected.map((r) => `${r.token}: ${r.code}`).join(", ");
  }
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

function unsubscribe(token) {
  // The client forgets the token (no resubscribe after a reconnect) and tells the server once connected.
  if (state.client) state.client.unsubscribe([token]).catch(() => undefined);
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

// Ticks the service conflated or lost for a row (the client compares each tick's seq with the last).
function onGap(gap) {
  const row = state.rows.get(gap.token);
  if (!row) return;
  row.missed += gap.missed;
  row.tr.dataset.missed = row.missed;
  row.cells.age.title = `${row.missed} ticks missed (seq gaps) since subscribing`;
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
    row = { tr, depthTr, depthTd, cells, prices: [], seq: -1, epoch: null, missed: 0, mode, ingestedAt: null };
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
  // A snapshot older than what is on screen is dropped; a new epoch restarts seq at 1.
  if (!row || row.withdrawn || (tick.epoch === row.epoch && tick.seq <= row.seq)) return;
  row.seq = tick.seq;
  row.epoch = tick.epoch;
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
    $("#results").replaceChildren();
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
      subscribe([instrument.instrument_token], $("#mode").value, label);
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
    if (wanted.tokens.length) subscribe(wanted.tokens, mode);
    // One request per symbol, so each row is labelled with the symbol it was asked for.
    wanted.instruments.forEach((instrument) => subscribe([instrument], mode, instrument));
  } else if (state.results.length) {
    const first = state.results[0];
    subscribe([first.instrument_token], mode, `${first.exchange}:${first.tradingsymbol}`);
  } else {
    return;
  }
  doneWithSearch();
});
$("#search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search(event.target.value.trim()), 250);
});
// A development token (TICKER_ENV=development only): a new throwaway user, or a fresh token for `user`.
async function devToken(user) {
  const response = await fetch("/dev/token", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(user ? { user } : {}),
  });
  if (!response.ok) { $("#connect-error").textContent = `no development token (${response.status})`; return null; }
  return response.json();
}
const devButton = $("#dev-token");
if (devButton) {
  devButton.addEventListener("click", async () => {
    const reply = await devToken(null);
    if (reply) connect(reply.token, reply.user);
  });
}

$("#token").value = sessionStorage.getItem(TOKEN_KEY) || "";
updateCount();
setInterval(ping, PING_EVERY_MS);
setInterval(refreshAges, AGE_EVERY_MS);
