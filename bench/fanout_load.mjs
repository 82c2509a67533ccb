// The fan-out benchmark's load generator (driven by bench/fanout.py): many socket.io-client
// connections in one Node process, cheap enough per tick that the web process, not this, is
// the bottleneck. Reads one JSON job from argv[2]; prints JSON lines to stdout:
//   {"event": "ready", ...}            every client connected (and subscribed, when streaming)
//   {"event": "start"} / {"event": "end", ...figures}   around the measured window
// Job: {url, clients: [{jwt, tokens}], mode: "stream"|"idle", warmup, seconds, concurrency}
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const say = (event, extra = {}) => process.stdout.write(JSON.stringify({ event, t: Date.now(), ...extra }) + "\n");
const sockets = [];
let measuring = false;
let deliveries = 0;
let frames = 0;
let disconnects = 0;
let latencies = [];

function onTicks(ticks) {
  if (!measuring) return;
  frames += 1;
  deliveries += ticks.length;
  const now = Date.now();
  for (const tick of ticks) latencies.push(now - tick.ingest_ts);
}

function open(client) {
  return new Promise((resolve, reject) => {
    const socket = io(job.url, { auth: { token: client.jwt }, transports: ["websocket"], reconnection: false });
    sockets.push(socket);
    socket.on("connect_error", (err) => reject(new Error(`${err.message} ${JSON.stringify(err.data)}`)));
    socket.on("disconnect", () => { disconnects += 1; });
    socket.on("ticks", onTicks);
    // A subscription can be refused for a moment while the service starts (upstream capacity
    // not yet known): try again a few times before giving up.
    const subscribe = (tries) => socket.emit("subscribe", { tokens: client.tokens, mode: "quote" }, (reply) => {
      if (!reply.error && !reply.rejected.length) resolve();
      else if (tries > 1) setTimeout(() => subscribe(tries - 1), 1000);
      else reject(new Error(JSON.stringify(reply)));
    });
    socket.on("connected", () => (job.mode === "stream" ? subscribe(10) : resolve()));
  });
}

async function openAll() {
  let next = 0;
  const worker = async () => {
    while (next < job.clients.length) await open(job.clients[next++]);
  };
  await Promise.all(Array.from({ length: job.concurrency }, worker));
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : null;
}

const sleep = (secs) => new Promise((resolve) => setTimeout(resolve, secs * 1000));

async function main() {
  const started = Date.now();
  await openAll();
  say("ready", { clients: sockets.length, secs: (Date.now() - started) / 1000 });
  if (job.mode === "idle") {
    await sleep(job.seconds);
    say("end", { disconnects });
  } else {
    await sleep(job.warmup);
    measuring = true;
    const from = Date.now();
    say("start");
    await sleep(job.seconds);
    measuring = false;
    const secs = (Date.now() - from) / 1000;
    const sorted = Float64Array.from(latencies).sort();
    say("end", {
      secs, deliveries, frames, disconnects,
      p50_ms: percentile(sorted, 50), p99_ms: percentile(sorted, 99), max_ms: sorted.length ? sorted[sorted.length - 1] : null,
    });
    latencies = [];
  }
  for (const socket of sockets) socket.close();
  process.exit(0);
}

main().catch((err) => {
  say("failed", { error: String(err) });
  process.exit(1);
});
