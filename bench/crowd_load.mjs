// The crowd benchmark's load generator (driven by bench/crowd.py): every client connects at the
// same moment, as after a replica restart or a deploy, and subscribes as soon as it is connected.
// No retries and no pacing: whatever the server answers is counted, errors included.
// Reads one JSON job from argv[2]: {url, clients: [{jwt, tokens}], mode, settle}.
// Prints one JSON line: {"event": "end", ...figures}; times are milliseconds from the start.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const start = Date.now();
const since = () => Date.now() - start;
const results = job.clients.map(() => ({}));
const sockets = [];
const count = (table, key) => { table[key] = (table[key] || 0) + 1; };
const refused = {};
const errors = {};

function open(client, result) {
  const socket = io(job.url, { auth: { token: client.jwt }, transports: ["websocket"], reconnection: false });
  sockets.push(socket);
  socket.on("connect_error", (err) => { result.refused = true; count(refused, err.data?.code || err.message); });
  socket.on("error", (e) => count(errors, e?.code || String(e)));
  socket.on("ticks", () => { if (result.firstTick === undefined) result.firstTick = since(); });
  socket.on("connect", () => {
    result.connected = since();
    socket.emit("subscribe", { tokens: client.tokens, mode: job.mode }, (reply) => {
      if (reply.error) count(errors, `ack:${reply.error.code}`);
      else if (reply.rejected.length) reply.rejected.forEach((r) => count(errors, `rejected:${r.code}`));
      else result.subscribed = since();
    });
  });
}

function percentile(values, p) {
  const sorted = values.filter((v) => v !== undefined).sort((a, b) => a - b);
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : null;
}

function summary(field) {
  const values = results.map((r) => r[field]);
  const done = values.filter((v) => v !== undefined);
  return { count: done.length, p50: percentile(values, 50), p99: percentile(values, 99),
           max: done.length ? Math.max(...done) : null };
}

job.clients.forEach((client, i) => open(client, results[i]));
const deadline = start + job.settle * 1000;
while (Date.now() < deadline && results.some((r) => r.firstTick === undefined && !r.refused)) {
  await new Promise((resolve) => setTimeout(resolve, 50));
}
process.stdout.write(JSON.stringify({
  event: "end", clients: job.clients.length, refused, errors,
  connected: summary("connected"), subscribed: summary("subscribed"), first_tick: summary("firstTick"),
}) + "\n");
sockets.forEach((socket) => socket.close());
process.exit(0);
