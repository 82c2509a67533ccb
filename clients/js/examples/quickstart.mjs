// Stream INFY (full) and NIFTY 50 (ltp) from a local `make run`.
// usage: JWT=$(../../.venv/bin/flask --app ticker jwt mint --user you) node examples/quickstart.mjs
import { TickerClient } from "@ticker/client";

const client = new TickerClient({
  url: process.env.TICKER_URL ?? "http://127.0.0.1:5000",
  getToken: async () => process.env.JWT, // in an app: fetch a fresh JWT from your auth server
});
const stop = Number(process.env.STOP_AFTER_TICKS ?? Infinity);
let count = 0;

client.on("connect", (hello) => console.log("connected as", hello.user));
client.on("disconnect", (e) => console.log("disconnected:", e.reason, e.reconnecting ? "(reconnecting)" : ""));
client.on("refused", (e) => console.error("refused:", e.code, e.message));
client.on("ticks", (ticks) => {
  for (const tick of ticks) {
    const depth = tick.mode === "full" && tick.depth ? ` bid ${tick.depth.buy[0].price}` : "";
    console.log(tick.instrument_token, tick.mode, tick.last_price, `seq ${tick.seq}`, tick.snapshot ? "(snapshot)" : "", depth);
  }
  if ((count += ticks.length) >= stop) client.close();
});
client.on("gap", (g) => console.warn(`token ${g.token}: ${g.missed} ticks missed`));
client.on("upstream_unavailable", (e) => console.warn("stale:", e.tokens, e.reason));
client.on("upstream_restored", (e) => console.log("live again:", e.tokens));

const full = await client.subscribe(["NSE:INFY"], "full");
const ltp = await client.subscribe([256265], "ltp");
console.log("subscribed", full.tokens, ltp.tokens, "rejected", [...full.rejected, ...ltp.rejected]);
