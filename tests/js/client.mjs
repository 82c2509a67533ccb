// A socket.io-client (the browser's library) session, driven by tests/web/test_js_client.py:
// connect with a JWT, subscribe, collect ticks, ping, and print what it saw as one JSON line.
// usage: node tests/js/client.mjs URL JWT '{"tokens": [...], "mode": "quote"}' TICKS_PER_TOKEN
import { io } from "socket.io-client";

const [url, token, request, perToken] = process.argv.slice(2);
const wanted = JSON.parse(request);
const seen = { connected: null, subscribed: null, ticks: [], pong: null, connect_error: null };
const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });

function finish(code) {
  process.stdout.write(JSON.stringify(seen) + "\n");
  socket.close();
  process.exit(code);
}

setTimeout(() => finish(2), 15000);
socket.on("connect_error", (err) => {
  seen.connect_error = { message: err.message, data: err.data };
  finish(0);
});
socket.on("connected", (hello) => {
  seen.connected = hello;
  socket.emit("subscribe", wanted, (reply) => {
    seen.subscribed = reply;
  });
});
socket.on("ticks", (ticks) => {
  seen.ticks.push(...ticks);
  const counts = {};
  for (const tick of seen.ticks) counts[tick.instrument_token] = (counts[tick.instrument_token] || 0) + 1;
  // Every accepted token (those refused in `rejected` never tick).
  const accepted = seen.subscribed ? seen.subscribed.tokens : wanted.tokens;
  const done = accepted.every((t) => (counts[t] || 0) >= Number(perToken));
  if (done && seen.pong === null) {
    seen.pong = false;
    socket.emit("ping", (reply) => {
      seen.pong = reply;
      finish(0);
    });
  }
});
