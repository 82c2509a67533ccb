// A session of the built @ticker/client package (clients/js/dist), driven by
// tests/clients/test_js_client_package.py. Prints one JSON line per step; after the line
// {"step": "cut"} the test cuts the connection, and the script waits for the client to reconnect,
// resubscribe and stream every token again in its mode.
// usage: node tests/js/package_client.mjs URL JWT '{"ltp": [token], "full": ["NSE:NAME"], "refused": [token]}'
import { TickerClient, TickerError } from "../../clients/js/dist/index.js";

const [url, jwt, request] = process.argv.slice(2);
const wanted = JSON.parse(request);
const PER_TOKEN = 2;
const seen = { tokenCalls: 0, replies: {}, refusedEvents: [], badMode: null, before: {}, after: {}, resubscribed: null,
  disconnect: null, modes: {} };
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const finish = (code) => {
  say(seen);
  client.close();
  process.exit(code);
};
setTimeout(() => finish(2), 20000);

const client = new TickerClient({
  url,
  getToken: async () => {
    seen.tokenCalls += 1;
    return jwt;
  },
  retryDelayMs: 200,
  socketOptions: { reconnectionDelay: 200, reconnectionDelayMax: 500 },
});
let phase = "before";
let waiting = null; // resolves once every held token ticked PER_TOKEN times in this phase
client.on("not_entitled", (e) => seen.refusedEvents.push(e));
client.on("ticks", (ticks) => {
  for (const tick of ticks) {
    const counts = seen[phase];
    counts[tick.instrument_token] = (counts[tick.instrument_token] || 0) + 1;
    (seen.modes[tick.instrument_token] ??= new Set()).add(tick.mode);
    if (tick.mode === "full" && typeof tick.depth !== "object" && tick.tradable) throw new Error("a full tick without depth");
  }
  const held = [...client.subscriptions().keys()];
  if (waiting && held.length && held.every((t) => (seen[phase][t] || 0) >= PER_TOKEN)) waiting();
});
client.on("disconnect", (e) => {
  seen.disconnect = e;
  phase = "after";
});
client.on("resubscribed", (replies) => (seen.resubscribed = replies));

const streamed = () => new Promise((resolve) => (waiting = resolve));
seen.replies.ltp = await client.subscribe([...wanted.ltp, ...wanted.refused], "ltp");
seen.replies.full = await client.subscribe(wanted.full, "full");
try {
  await client.subscribe(wanted.ltp, "bogus");
} catch (err) {
  seen.badMode = { isTickerError: err instanceof TickerError, code: err.code, message: err.message };
}
await streamed();
seen.held = Object.fromEntries(client.subscriptions());
const reconnected = new Promise((resolve) => client.once("connect", resolve));
say({ step: "cut" });
await reconnected;
await streamed();
seen.modes = Object.fromEntries(Object.entries(seen.modes).map(([t, modes]) => [t, [...modes]]));
finish(0);
