// The fan-out benchmark's load generator (driven by bench/fanout.py): many socket.io-client
// connections in one Node process, cheap enough per tick that the web process, not this, is
// the bottleneck. Reads one JSON job from argv[2]; prints JSON lines to stdout:
//   {"event": "ready", ...}            every client connected (and subscribed, when streaming)
//   {"event": "start"} / {"event": "end", ...figures}   around the measured window
// Job: {url, clients: [{jwt, tokens, url?}] (a client's own url, else the job's), mode: "stream"|"idle", warmup, seconds, concurrency}
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";
import { Decoder, Encoder, protocol } from "socket.io-parser";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const say = (event, extra = {}) => process.stdout.write(JSON.stringify({ event, t: Date.now(), ...extra }) + "\n");
const sockets = [];
let measuring = false;
let deliveries = 0;
let frames = 0;
let disconnects = 0;
let latencies = [];

// One Node process stands in for hundreds of browsers, each of which would parse only its own
// frames; parsing every client's JSON here, one after another on one core, would delay the
// receipt of the next client's frame and count the load generator's queue as the server's
// latency. So a `ticks` event is stamped on receipt and its ticks are counted and their
// `ingest_ts` read by a scan of the text; every other packet goes through the standard parser.
const TICKS_EVENT = '2["ticks",';
const INGEST = '"ingest_ts":';

class StampingDecoder extends Decoder {
  add(data) {
    if (typeof data === "string" && data.startsWith(TICKS_EVENT)) {
      this.emitReserved("decoded", { type: 2, nsp: "/", data: ["ticks", data] });
    } else {
      super.add(data);
    }
  }
}

const parser = { protocol, Encoder, Decoder: StampingDecoder };

function onTicks(text) {
  if (!measuring) return;
  const now = Date.now();
  frames += 1;
  for (let at = text.indexOf(INGEST); at !== -1; at = text.indexOf(INGEST, at + INGEST.length)) {
    deliveries += 1;
    latencies.push(now - parseInt(text.substr(at + INGEST.length, 16), 10));
  }
}

function open(client) {
  return new Promise((resolve, reject) => {
    const socket = io(client.url || job.url, { auth: { token: client.jwt }, transports: ["websocket"], reconnection: false, parser });
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
