// Sessions of the built @ticker/client package (clients/js/dist) through what ends or renews a
// connection, driven by tests/clients/test_js_client_lifecycle.py. The JWTs come from `getToken`,
// signed here (RS256) with the test run's private key, so each one is fresh when asked for.
// Prints one JSON line: what the session saw.
// usage: node tests/js/package_lifecycle.mjs renew|max_age|gap|candles URL PRIVATE_KEY_FILE '{...}'
//   both: {"aud": ..., "iss": ...} (the service's JWT_AUDIENCE, JWT_ISSUER), and
//   renew: {"tokens": [token]}; max_age: {"ltp": [token], "names": ["NSE:A", "NSE:B"]};
//   candles: {"tokens": [token]} (on a replica that cuts connections: candles on both sides of the cut)
import { createSign, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

import { TickerClient } from "../../clients/js/dist/index.js";

const [scenario, url, keyFile, request] = process.argv.slice(2);
const wanted = JSON.parse(request);
const key = readFileSync(keyFile, "utf8");
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
const now = () => Date.now() / 1000;

/** An RS256 JWT for `user` that expires `ttl` seconds from now (as flask-jwt-extended mints them). */
function sign(user, ttl) {
  const iat = Math.floor(now());
  const claims = { sub: user, iat, nbf: iat, exp: iat + ttl, jti: randomUUID(), type: "access", fresh: false,
    aud: wanted.aud, iss: wanted.iss };
  const body = `${b64({ alg: "RS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createSign("RSA-SHA256").update(body).sign(key, "base64url")}`;
}

const seen = { calls: [], errors: [], reauthed: [], disconnects: [], connects: 0, ticks: [], sent: [], resubscribed: [] };
let closing = false; // the session's own close is no disconnect to report
const say = (code) => {
  if (scenario === "gap") {
    seen.ticks = seen.ticks.length; // the seqs of the tokens with a gap say what matters
    seen.seqs = Object.fromEntries(seen.gaps.map((gap) => [gap.token, seen.seqs[gap.token]]));
  }
  closing = true;
  client.close();
  process.stdout.write(JSON.stringify(seen) + "\n", () => process.exit(code));
};
setTimeout(() => say(2), 15000);

// renew: the first two JWTs live 3 s; the renewal of the second fails (the token service is down),
// so that one expires on the open connection and the server's warning must bring the renewal.
const lives = scenario === "renew" ? [3, 3, null, 60] : [60];
const client = new TickerClient({
  url,
  getToken: () => {
    const ttl = lives[Math.min(seen.calls.length, lives.length - 1)];
    const jwt = ttl === null ? null : sign("lifecycle", ttl);
    seen.calls.push({ at: now(), exp: jwt === null ? null : JSON.parse(atob(jwt.split(".")[1])).exp });
    if (jwt === null) throw new Error("the token service is down");
    return jwt;
  },
  retryDelayMs: 100,
  socketOptions: { reconnectionDelay: 100, reconnectionDelayMax: 300 },
});
const emitWithAck = client.socket.emitWithAck.bind(client.socket);
client.socket.emitWithAck = (event, ...args) => {
  if (event === "subscribe" || event === "unsubscribe") seen.sent.push({ at: now(), event, payload: args[0] });
  return emitWithAck(event, ...args);
};
client.on("error", (e) => seen.errors.push({ at: now(), ...e }));
client.on("reauthed", (r) => seen.reauthed.push({ at: now(), ...r }));
client.on("disconnect", (e) => closing || seen.disconnects.push({ at: now(), ...e }));
client.on("resubscribed", (replies) => seen.resubscribed.push(...replies));
client.on("connect", () => (seen.connects += 1));
client.on("ticks", (ticks) => {
  for (const t of ticks) seen.ticks.push({ at: now(), token: t.instrument_token, mode: t.mode, connection: seen.connects });
  if (seen.seqs) ticks.forEach((t) => (seen.seqs[t.instrument_token] ??= []).push([t.seq, t.snapshot === true]));
  if (done()) say(0);
});
const ticksSince = (at, token) => seen.ticks.filter((t) => t.at > at && t.token === token).length;

let done = () => false;
if (scenario === "gap") {
  seen.seqs = {}; // token -> [[seq, snapshot], ...] as received (the rest below)
} else if (scenario === "candles") {
  seen.candles = []; // [connection (1, then 2 after the cut), candle] as received
  const connection = () => seen.disconnects.length + 1; // `connect` comes only after the resubscribe's history
  client.on("candles", (candles) => candles.forEach((c) => seen.candles.push([connection(), c])));
  seen.reply = await client.subscribe(wanted.tokens, "quote", { candles: ["minute"] });
  // Done once candles came on a connection after the server's cut.
  done = () => seen.candles.some(([at]) => at >= 2) && seen.connects >= 2;
} else if (scenario === "renew") {
  await client.subscribe(wanted.tokens, "ltp");
  // Done once ticks flowed for a second after the renewal that followed the server's warning.
  done = () => {
    const warned = seen.errors.find((e) => e.code === "token_expired");
    const renewed = warned && seen.reauthed.find((r) => r.at > warned.at);
    return renewed !== undefined && ticksSince(renewed.at + 1, wanted.tokens[0]) >= 2;
  };
} else {
  seen.ltp = await client.subscribe(wanted.ltp, "ltp");
  seen.full = await client.subscribe(wanted.names, "full"); // names resolved in one request
  seen.unsubscribed = await client.unsubscribe([seen.full.tokens[0]]); // the first name's token
  seen.held = Object.fromEntries(client.subscriptions());
  // Done once every token still held ticked on a connection after the server's cut.
  done = () => {
    const cut = seen.disconnects[0];
    const held = [...wanted.ltp, ...seen.full.tokens.slice(1)];
    return cut !== undefined && seen.connects >= 2 && held.every((token) => ticksSince(cut.at, token) >= 2);
  };
}

// gap: {"tokens": [...]} streamed in full through a proxy; after {"step": "hold"} the test holds
// the server's bytes until the server conflates, then lets them through: done at the first gap.
if (scenario === "gap") {
  seen.gaps = [];
  client.on("gap", (gap) => seen.gaps.push(gap));
  await client.subscribe(wanted.tokens, "full");
  const held = new Promise((resolve) => {
    done = () => seen.ticks.length >= wanted.tokens.length * 2 && resolve();
  });
  await held;
  process.stdout.write(JSON.stringify({ step: "hold" }) + "\n");
  done = () => seen.gaps.length > 0;
}
